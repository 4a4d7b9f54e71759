"""Beam search constrained to a catalog's valid IDs, vectorised over users.

``transformers``' ``generate(prefix_allowed_tokens_fn=...)`` calls Python once
per beam per step; on CPU that dominates an evaluation of 20k users x 20 beams.
Here the trie of valid IDs is a few sorted arrays, one per depth:

* ``keys[t]``: sorted ``parent_node * K + code`` for every distinct ID prefix of
  length t+1, where ``parent_node`` indexes the distinct prefixes of length t
  (the root is node 0). The node a beam reaches by appending ``code`` is the
  position of its key (``searchsorted``); the nodes at the last depth are the
  rows of the sorted ID table, i.e. items.
* ``offsets[t]``: CSR offsets of each parent's children in ``keys[t]``, so the
  mask of allowed next codes for a whole batch of beams is one scatter.

The encoder runs once per user; the decoder runs one token per step with the
key/value cache, and the cross-attention cache is built once per user and only
repeated for the beams. Beams that cannot be filled (fewer valid IDs than the
beam width) carry score -inf and never produce an item, so every returned
item is a valid ID.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tasks.evaluate.retriever import N_SPECIAL, PAD_TOKEN


@dataclass(frozen=True)
class IdTrie:
    depth: int
    codebook_size: int
    keys: list[torch.Tensor]  # per depth: sorted int64 parent*K + code
    offsets: list[torch.Tensor]  # per depth: (n_parents + 1,) int64
    leaf_item: torch.Tensor  # (N,) int64: item row of each last-depth node

    @classmethod
    def build(cls, codes: np.ndarray, *, codebook_size: int) -> "IdTrie":
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[0] == 0:
            raise ValueError(f"codes must be a non-empty (N, D) array, got shape {codes.shape}")
        k = int(codebook_size)
        if codes.min() < 0 or codes.max() >= k:
            raise ValueError(f"codes must lie in [0, {k})")
        n, depth = codes.shape
        order = np.lexsort(codes.T[::-1])  # lexicographic row order
        sc = codes[order]
        if n > 1 and (np.diff(sc, axis=0) != 0).any(axis=1).sum() != n - 1:
            raise ValueError("IDs must be unique (each item one distinct code tuple)")
        parent = np.zeros(n, dtype=np.int64)  # node index of each sorted row's prefix of length t
        keys, offsets = [], []
        n_parents = 1
        for t in range(depth):
            key = parent * k + sc[:, t]
            new = np.ones(n, dtype=bool)
            new[1:] = key[1:] != key[:-1]
            uniq = key[new]
            keys.append(torch.from_numpy(uniq))
            parents_of_uniq = uniq // k
            offsets.append(torch.from_numpy(np.searchsorted(parents_of_uniq, np.arange(n_parents + 1)).astype(np.int64)))
            parent = np.cumsum(new) - 1
            n_parents = uniq.shape[0]
        return cls(depth=depth, codebook_size=k, keys=keys, offsets=offsets, leaf_item=torch.from_numpy(order.astype(np.int64)))

    def allowed(self, t: int, nodes: torch.Tensor) -> torch.Tensor:
        """(b,) parent nodes at depth t -> (b, K) bool mask of codes with a valid child."""
        off = self.offsets[t]
        start, stop = off[nodes], off[nodes + 1]
        counts = stop - start
        mask = torch.zeros(nodes.shape[0], self.codebook_size, dtype=torch.bool)
        total = int(counts.sum())
        if total:
            rows = torch.repeat_interleave(torch.arange(nodes.shape[0]), counts)
            first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
            edge = torch.repeat_interleave(start, counts) + torch.arange(total) - first
            mask[rows, self.keys[t][edge] % self.codebook_size] = True
        return mask

    def child(self, t: int, nodes: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Node reached from ``nodes`` by ``codes`` at depth t; -1 where that is no valid prefix."""
        key = nodes * self.codebook_size + codes
        pos = torch.searchsorted(self.keys[t], key).clamp_max(self.keys[t].shape[0] - 1)
        return torch.where(self.keys[t][pos] == key, pos, torch.full_like(pos, -1))


@torch.no_grad()
def constrained_beam_search(
    model, trie: IdTrie, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, beam: int, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``beam`` items per user: (B, beam) item rows (-1 where fewer exist) and their log-probs."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    k, depth = trie.codebook_size, trie.depth
    b = input_ids.shape[0]
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    enc = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())

    def step_logp(tokens: torch.Tensor, enc_h: torch.Tensor, mask: torch.Tensor, t: int) -> torch.Tensor:
        out = model(encoder_outputs=(enc_h,), attention_mask=mask, decoder_input_ids=tokens, cache=cache, use_cache=True)
        logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        return logp[:, N_SPECIAL + t * k : N_SPECIAL + (t + 1) * k].cpu()

    # depth 0: one beam per user
    logp = step_logp(torch.full((b, 1), PAD_TOKEN, dtype=torch.long, device=device), enc, attention_mask, 0)
    root = torch.zeros(b, dtype=torch.long)
    logp = logp.masked_fill(~trie.allowed(0, root), float("-inf"))
    w0 = min(beam, k)
    scores, codes = logp.topk(w0, dim=1)  # (b, w0)
    if w0 < beam:
        scores = torch.cat([scores, torch.full((b, beam - w0), float("-inf"))], 1)
        codes = torch.cat([codes, torch.zeros(b, beam - w0, dtype=torch.long)], 1)
    alive = torch.isfinite(scores)
    nodes = trie.child(0, root[:, None].expand(-1, beam), codes)
    nodes = torch.where(alive, nodes, torch.zeros_like(nodes))
    cache.reorder_cache(torch.arange(b, device=device).repeat_interleave(beam))
    enc_w = enc.repeat_interleave(beam, 0)
    mask_w = attention_mask.repeat_interleave(beam, 0)
    base = (torch.arange(b) * beam)[:, None]
    for t in range(1, depth):
        tokens = (N_SPECIAL + (t - 1) * k + codes).reshape(-1, 1).to(device)
        logp = step_logp(tokens, enc_w, mask_w, t).view(b, beam, k)
        logp = logp.masked_fill(~trie.allowed(t, nodes.reshape(-1)).view(b, beam, k), float("-inf"))
        total = (scores[..., None] + logp).reshape(b, beam * k)
        scores, flat = total.topk(beam, dim=1)
        origin, codes = flat // k, flat % k
        alive = torch.isfinite(scores)
        parent = nodes.gather(1, origin)
        nodes = trie.child(t, parent, codes)
        if bool((nodes[alive] < 0).any()):  # cannot happen: the mask only admits valid children
            raise AssertionError("constrained beam search reached an invalid prefix")
        nodes = torch.where(alive, nodes, torch.zeros_like(nodes))
        cache.self_attention_cache.reorder_cache((base + origin).reshape(-1).to(device))
    items = torch.where(alive, trie.leaf_item[nodes], torch.full_like(nodes, -1))
    return items, scores
