"""The generative retriever: a small T5 over semantic-ID tokens (TIGER).

Vocabulary: one token per (level, code) pair plus ``pad`` (also the decoder
start token) and ``eos``; token = 2 + level * K + code. An item is its D = L+1
ID tokens; a history is the concatenation of its items' tokens. The decoder
learns to emit the next item's D tokens. We use ``transformers``' T5 (a
well-kept implementation) with a small config, trained from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tasks.evaluate.split import PAD

PAD_TOKEN = 0
EOS_TOKEN = 1
N_SPECIAL = 2


@dataclass(frozen=True, kw_only=True)
class RetrieverConfig:
    """Model shape. Defaults: 4 + 4 layers, d_model 128 (the issue's protocol)."""

    d_model: int = 128
    d_ff: int = 512
    num_heads: int = 4
    d_kv: int = 32
    num_layers: int = 4
    num_decoder_layers: int = 4
    dropout: float = 0.1


def item_tokens(codes: np.ndarray, codebook_size: int) -> torch.Tensor:
    """(N, D) codes -> (N, D) token ids (level-offset), int64."""
    codes = np.asarray(codes, dtype=np.int64)
    depth = codes.shape[1]
    return torch.from_numpy(N_SPECIAL + np.arange(depth, dtype=np.int64)[None, :] * codebook_size + codes)


def vocab_size(depth: int, codebook_size: int) -> int:
    return N_SPECIAL + depth * codebook_size


def build_model(*, depth: int, codebook_size: int, config: RetrieverConfig):
    """A freshly initialised T5ForConditionalGeneration (seed the torch RNG before calling)."""
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(
        vocab_size=vocab_size(depth, codebook_size),
        d_model=config.d_model,
        d_kv=config.d_kv,
        d_ff=config.d_ff,
        num_layers=config.num_layers,
        num_decoder_layers=config.num_decoder_layers,
        num_heads=config.num_heads,
        dropout_rate=config.dropout,
        feed_forward_proj="relu",
        pad_token_id=PAD_TOKEN,
        eos_token_id=EOS_TOKEN,
        decoder_start_token_id=PAD_TOKEN,
        tie_word_embeddings=True,  # T5 then scales the decoder output by d_model**-0.5: sane initial logits
    )
    return T5ForConditionalGeneration(cfg)


def encode_histories(history: np.ndarray, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, H) PAD-padded item rows -> input_ids, attention_mask of width (longest history) x D."""
    hist = torch.from_numpy(np.ascontiguousarray(history)).long()
    valid = hist != PAD
    width = max(int(valid.sum(1).max()) if hist.numel() else 1, 1)
    hist, valid = hist[:, :width], valid[:, :width]
    ids = tokens[hist.clamp_min(0)]  # (b, width, D)
    ids = ids.masked_fill(~valid[..., None], PAD_TOKEN).reshape(hist.shape[0], -1)
    mask = valid[..., None].expand(-1, -1, tokens.shape[1]).reshape(hist.shape[0], -1)
    return ids, mask.long()
