import numpy as np
import pytest
import torch

from tasks.evaluate.beam import IdTrie, constrained_beam_search
from tasks.evaluate.retriever import N_SPECIAL, PAD_TOKEN, RetrieverConfig, build_model, encode_histories, item_tokens

TINY = RetrieverConfig(d_model=16, d_ff=32, num_heads=2, d_kv=8, num_layers=1, num_decoder_layers=2, dropout=0.0)


def _codes(n: int, depth: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    flat = rng.choice(k**depth, n, replace=False)
    return np.stack([(flat // k ** (depth - 1 - t)) % k for t in range(depth)], 1)


def test_trie_masks_and_children():
    codes = np.array([[0, 1, 0], [0, 1, 1], [2, 0, 0], [0, 3, 2]])
    trie = IdTrie.build(codes, codebook_size=4)
    assert trie.allowed(0, torch.tensor([0])).tolist() == [[True, False, True, False]]
    n0 = trie.child(0, torch.tensor([0, 0, 0]), torch.tensor([0, 2, 1]))
    assert n0[2] == -1
    assert trie.allowed(1, n0[:1]).tolist() == [[False, True, False, True]]
    n1 = trie.child(1, n0[:1], torch.tensor([1]))
    leaf = trie.child(2, n1, torch.tensor([1]))
    assert trie.leaf_item[leaf].item() == 1
    with pytest.raises(ValueError, match="unique"):
        IdTrie.build(np.array([[1, 2], [1, 2]]), codebook_size=4)


def _exhaustive(model, tokens, ids, mask, depth, k):
    """Score of every item = sum of full-vocabulary log-probs of its tokens (teacher forcing)."""
    n = tokens.shape[0]
    out = []
    for u in range(ids.shape[0]):
        dec = torch.cat([torch.full((n, 1), PAD_TOKEN), tokens[:, :-1]], 1)
        logits = model(input_ids=ids[u : u + 1].expand(n, -1), attention_mask=mask[u : u + 1].expand(n, -1), decoder_input_ids=dec).logits
        lp = torch.log_softmax(logits, -1).gather(2, tokens[:, :, None]).squeeze(2).sum(1)
        out.append(lp)
    return torch.stack(out)


@torch.no_grad()
def test_wide_beam_equals_exhaustive_ranking_and_yields_only_valid_ids():
    k, depth, n = 4, 3, 12
    codes = _codes(n, depth, k, seed=1)
    torch.manual_seed(0)
    model = build_model(depth=depth, codebook_size=k, config=TINY).eval()
    tokens = item_tokens(codes, k)
    trie = IdTrie.build(codes, codebook_size=k)
    hist = np.array([[0, 3, -1], [5, -1, -1], [2, 7, 11]], dtype=np.int32)
    ids, mask = encode_histories(hist, tokens)
    items, scores = constrained_beam_search(model, trie, ids, mask, beam=16)
    assert items.shape == (3, 16)
    assert (items[:, n:] == -1).all() and torch.isinf(scores[:, n:]).all()  # only 12 IDs exist
    exact = _exhaustive(model, tokens, ids, mask, depth, k)
    for u in range(3):
        assert sorted(items[u, :n].tolist()) == list(range(n))  # every valid ID once, nothing else
        want = torch.argsort(exact[u], descending=True)
        assert items[u, :n].tolist() == want.tolist()
        assert torch.allclose(scores[u, :n], exact[u][want], atol=1e-4)


@torch.no_grad()
def test_narrow_beam_returns_distinct_valid_ids():
    k, depth = 8, 4
    codes = _codes(200, depth, k, seed=2)
    torch.manual_seed(1)
    model = build_model(depth=depth, codebook_size=k, config=TINY).eval()
    tokens = item_tokens(codes, k)
    trie = IdTrie.build(codes, codebook_size=k)
    hist = np.random.default_rng(0).integers(0, 200, (10, 4)).astype(np.int32)
    items, scores = constrained_beam_search(model, trie, *encode_histories(hist, tokens), beam=5)
    assert (items >= 0).all() and (items < 200).all()
    for row in items.tolist():
        assert len(set(row)) == 5
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    assert tokens[items.reshape(-1)].min() >= N_SPECIAL
