import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rqvae_core import RQVAE, RQVAEConfig, encode_array, load_checkpoint, save_checkpoint

CORE = Path(__file__).resolve().parents[2] / "rqvae_core"
FORBIDDEN = ["ray", "prefect", "polars", "pyarrow", "s3fs", "boto3", "botocore", "fsspec", "pandas", "pydantic"]


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    cfg = RQVAEConfig(input_dim=16, hidden_dims=(32,), skip=False, embed_dim=8, codebook_size=8, ema=True, quantizer="ste")
    model = RQVAE(config=cfg)
    model.train()
    model(torch.randn(64, 16))  # k-means init + EMA buffers change state
    save_checkpoint(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_checkpoint(tmp_path)
    assert loaded.config == cfg
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(40, 16)
    ea, eb = encode_array(model, x), encode_array(loaded, x)
    assert all(torch.equal(s, t) for s, t in zip(ea, eb))


def test_checkpoint_is_not_a_pickle(tmp_path):
    save_checkpoint(RQVAE(config=RQVAEConfig(input_dim=8, hidden_dims=(8,), codebook_size=4)), tmp_path)
    head = (tmp_path / "model.safetensors").read_bytes()[:2]
    assert head != b"\x80\x04" and head[:1] != b"PK"  # neither a raw pickle nor torch's zip format


@pytest.mark.parametrize(
    "bad",
    [
        dict(codebook_size=0), dict(n_levels=0), dict(skip=False, embed_dim=0), dict(quantizer="nope"), dict(ema_decay=1.5),
        dict(embed_dim=32), dict(skip=False), dict(beta=-0.1),
    ],
)
def test_config_rejects_out_of_range_values(bad):
    with pytest.raises(ValueError):
        RQVAEConfig(**bad)


def test_a_checkpoint_from_before_the_skip_encoder_loads_as_the_mlp_bottleneck_it_was(tmp_path):
    """Old config.json files have no ``skip`` key: they were plain MLP bottlenecks and must load as such."""
    old = RQVAEConfig(input_dim=8, hidden_dims=(8,), skip=False, embed_dim=4, codebook_size=4)
    save_checkpoint(RQVAE(config=old), tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    del d["skip"]
    (tmp_path / "config.json").write_text(json.dumps(d))
    assert load_checkpoint(tmp_path).config == old


@pytest.mark.parametrize("removed", ["cosine", "simvq", "vae"])
def test_a_checkpoint_that_used_a_removed_option_is_refused_and_one_that_did_not_loads(tmp_path, removed):
    """Options that lost in the project's measurements were deleted: a model that used one cannot be rebuilt
    (refit it), while an older config.json that only lists them switched off loads as the model it was."""
    cfg = RQVAEConfig(input_dim=8, hidden_dims=(8,), skip=False, embed_dim=4, codebook_size=4)
    save_checkpoint(RQVAE(config=cfg), tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**d, removed: False, "vae_beta": 0.001}))
    assert load_checkpoint(tmp_path).config == cfg
    (tmp_path / "config.json").write_text(json.dumps({**d, removed: True}))
    with pytest.raises(ValueError, match="removed after it lost"):
        load_checkpoint(tmp_path)


def test_a_checkpoint_fitted_with_sinkhorn_balancing_loads(tmp_path):
    """Sinkhorn only changed which code a training batch picked; the model it left encodes by the same argmin."""
    cfg = RQVAEConfig(input_dim=8, hidden_dims=(8,), codebook_size=4)
    save_checkpoint(RQVAE(config=cfg), tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**d, "sinkhorn": True, "sinkhorn_epsilon": 0.05, "sinkhorn_iters": 3}))
    assert load_checkpoint(tmp_path).config == cfg


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown"):
        RQVAEConfig.from_dict({"codebook_sise": 3})


def test_core_imports_no_pipeline_libraries():
    """rqvae_core is usable in a notebook: only torch, numpy, safetensors and the stdlib."""
    code = (
        "import sys, rqvae_core, rqvae_core.ids, rqvae_core.metrics, rqvae_core.similarity;"
        f"bad=[m for m in {FORBIDDEN!r} if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=CORE.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    allowed = {"torch", "numpy", "safetensors", "rqvae_core", "__future__"} | set(sys.stdlib_module_names)
    for path in CORE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"
