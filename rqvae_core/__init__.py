"""rqvae_core: the RQ-VAE model library (torch + numpy + safetensors only)."""

from rqvae_core.checkpoint import load_checkpoint, save_checkpoint
from rqvae_core.config import RQVAEConfig, TrainConfig
from rqvae_core.encode import encode_array, encode_batches
from rqvae_core.model import RQVAE, Encoded, RQVAEOutput
from rqvae_core.train import EpochMetrics, FitResult, Trainer, fit

__all__ = [
    "RQVAE", "RQVAEConfig", "TrainConfig", "RQVAEOutput", "Encoded", "Trainer", "fit", "FitResult", "EpochMetrics",
    "encode_array", "encode_batches", "save_checkpoint", "load_checkpoint",
]
