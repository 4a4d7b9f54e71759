"""Export copies inside one store (S3 server-side, local file copies) and streams only across stores."""

from tasks import storage
from tests.s3_fixture import BUCKET, moto_s3  # noqa: F401


def _tree(root: str) -> None:
    storage.write_bytes(storage.join(root, "a", "part-00000.parquet"), b"one")
    storage.write_bytes(storage.join(root, "a", "sub", "x.json"), b"two")


def test_copy_tree_within_and_across_stores(tmp_path, moto_s3):  # noqa: F811
    local, s3 = str(tmp_path / "src"), f"s3://{BUCKET}/src"
    _tree(local)
    _tree(s3)
    for src, dst in [(local, str(tmp_path / "dst")), (s3, f"s3://{BUCKET}/dst"), (local, f"s3://{BUCKET}/up"), (s3, str(tmp_path / "down"))]:
        assert storage.copy_tree(storage.join(src, "a"), dst) == ["part-00000.parquet", "sub/x.json"]
        assert storage.read_bytes(storage.join(dst, "sub", "x.json")) == b"two"
        assert storage.read_bytes(storage.join(dst, "part-00000.parquet")) == b"one"
