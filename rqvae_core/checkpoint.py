"""Checkpoints as ``model.safetensors`` + ``config.json``: loading never unpickles."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rqvae_core.config import RQVAEConfig
from rqvae_core.model import RQVAE

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save_checkpoint(model: RQVAE, directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS), metadata={"format": "pt"})  # one key: byte-identical files for identical weights
    (directory / CONFIG).write_text(model.config.to_json() + "\n")
    return directory


def load_checkpoint(directory: str | Path, *, device: str | torch.device = "cpu") -> RQVAE:
    directory = Path(directory)
    config = RQVAEConfig.from_dict(json.loads((directory / CONFIG).read_text()))
    model = RQVAE(config=config)
    model.load_state_dict(load_file(str(directory / WEIGHTS), device="cpu"))
    return model.to(device).eval()
