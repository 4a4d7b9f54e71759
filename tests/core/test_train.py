"""The fit loop: codebook utilisation, every quantizer option, schedule, early stop, NaN detection."""

import math

import pytest
import torch

from rqvae_core import RQVAE, RQVAEConfig, TrainConfig, encode_array, fit
from rqvae_core.graph import spectral_centers
from rqvae_core.kmeans import residual_kmeans
from rqvae_core.train import lr_at
from tests.core.conftest import clustered, epochs_of

SMALL = dict(input_dim=64, hidden_dims=(128, 64))
BOTTLENECK = dict(SMALL, skip=False, embed_dim=16)
"""The plain MLP bottleneck: starts from a random decoder, so every option must lower its recon."""


def train(epochs: int, **kw) -> TrainConfig:
    return TrainConfig(epochs=epochs, warmup_steps=kw.pop("warmup_steps", 20), early_stop_patience=kw.pop("early_stop_patience", 0), **kw)


def _active_share(model: RQVAE, x: torch.Tensor) -> list[float]:
    codes = encode_array(model, x).codes
    return [codes[:, level].unique().numel() / model.config.codebook_size for level in range(model.config.n_levels)]


def test_kmeans_init_and_dead_code_restart_prevent_collapse():
    x = clustered()
    usage = {}
    for name, extra in {
        "toolbox": dict(quantizer="rotation", kmeans_init=True, dead_code_window=20),
        "plain_ste": dict(quantizer="ste", kmeans_init=False, dead_code_window=0, ema=False),
    }.items():
        cfg = RQVAEConfig(**BOTTLENECK, **extra)
        model = RQVAE(config=cfg)
        fit(model=model, train=train(6, lr=5e-4), epoch_batches=epochs_of(x), steps_per_epoch=40)
        usage[name] = _active_share(model, x)
    assert min(usage["toolbox"]) >= 0.95, usage
    # plain STE from a random codebook collapses measurably: most codes are never used
    assert min(usage["toolbox"]) - max(usage["plain_ste"]) >= 0.5, usage


@pytest.mark.parametrize("spectral", [True, False])
def test_an_untrained_model_is_residual_kmeans_of_the_whole_set(spectral):
    """Skip encoder + data-initialised codebooks: before any step the IDs are residual k-means's (level 1 from the
    k-NN graph's spectral clusters by default, else from k-means) and x̂ = Σ codewords."""
    x = clustered(n=1200, k=120)
    cfg = RQVAEConfig(input_dim=64, codebook_size=32, spectral_init=spectral)
    model = RQVAE(config=cfg)
    model.init_codebooks(x)
    enc = encode_array(model, x)
    first = None
    if spectral:
        first = spectral_centers(x, k=32, neighbors=cfg.spectral_neighbors, dims=cfg.spectral_dims,
                                 iters=cfg.kmeans_iters, seed=cfg.seed, max_rows=cfg.spectral_rows)
        assert first is not None
    reference = residual_kmeans(x, n_levels=cfg.n_levels, k=cfg.codebook_size, iters=cfg.kmeans_iters, seed=cfg.seed, first_centers=first)
    assert torch.equal(enc.codes, reference.codes)
    assert torch.allclose(enc.recon, enc.quantized) and torch.allclose(enc.distance, reference.distance, atol=1e-4)


def test_spectral_init_falls_back_to_kmeans_when_a_cell_could_not_hold_its_ids():
    """One level-1 code holds at most K^L IDs; a graph cluster filling half of that would overflow the ID space."""
    x = clustered(n=400, k=20)
    cfg = RQVAEConfig(input_dim=64, codebook_size=4, n_levels=2)  # at most 16 IDs under a level-1 code
    model = RQVAE(config=cfg)
    model.init_codebooks(x)
    reference = residual_kmeans(x, n_levels=2, k=4, iters=cfg.kmeans_iters, seed=cfg.seed)
    assert torch.equal(encode_array(model, x).codes, reference.codes)


def test_data_initialised_codebooks_stay_in_use_without_restarts():
    """The default (no dead-code restarts): training from residual k-means keeps the codes busy and stays near it."""
    x = clustered(n=6000, k=1500)
    cfg = RQVAEConfig(**SMALL, codebook_size=64)
    model = RQVAE(config=cfg)
    model.init_codebooks(x)
    start = encode_array(model, x).codes  # fit initialises again from the same data: the same codebooks
    history = fit(model=model, train=train(4), epoch_batches=epochs_of(x), steps_per_epoch=12, init_data=x).history
    after, end = _active_share(model, x), encode_array(model, x).codes
    assert all(not h.nonfinite for h in history)
    assert min(after) >= 0.9, after
    # fine-tuning starts from the data-initialised codes and stays near them
    assert (start[:, 0] == end[:, 0]).float().mean() >= 0.8


@pytest.mark.parametrize(
    "options",
    [
        dict(quantizer="ste"),
        dict(quantizer="rotation"),
        dict(ema=False),
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_every_option_trains_and_reduces_recon(options):
    x = clustered(n=4000, k=200)
    cfg = RQVAEConfig(**BOTTLENECK, codebook_size=32, **options)
    model = RQVAE(config=cfg)
    history = fit(model=model, train=train(4), epoch_batches=epochs_of(x, 256), steps_per_epoch=16).history
    assert all(not h.nonfinite for h in history)
    assert history[-1].recon < history[0].recon
    enc = encode_array(model, x[:100])
    assert enc.codes.shape == (100, 3) and enc.codes.max() < 32


def test_lr_schedule_warms_up_then_decays():
    kw = dict(base_lr=1e-3, total_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, **kw) == pytest.approx(1e-4)
    assert lr_at(9, **kw) == pytest.approx(1e-3)
    assert lr_at(100, **kw) == pytest.approx(1e-4)
    values = [lr_at(s, **kw) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_nonfinite_loss_stops_the_fit_and_is_reported():
    x = clustered(n=1024, k=10)
    x[5, 3] = math.nan
    cfg = RQVAEConfig(**SMALL, codebook_size=8)
    result = fit(model=RQVAE(config=cfg), train=train(5), epoch_batches=epochs_of(x, 256), steps_per_epoch=4)
    assert result.stopped_early and result.history[-1].nonfinite and len(result.history) == 1


def test_fine_tuning_improves_on_its_residual_kmeans_start():
    """The default fit starts at residual k-means (skip encoder, data-initialised codebooks) and must end with a
    lower whole-set reconstruction error than it started with. Codebooks moved by AdamW barely did (Adam turns
    the near-zero-mean minibatch gradients at a k-means fixed point into lr-sized steps); EMA codebooks do."""
    x = torch.nn.functional.normalize(clustered(n=3000, k=300, dim=32, noise=0.5), dim=-1)
    cfg = RQVAEConfig(input_dim=32, hidden_dims=(64,), codebook_size=32)
    start = RQVAE(config=cfg)
    start.init_codebooks(x)
    model = RQVAE(config=cfg)
    fit(model=model, train=train(4, warmup_steps=50), epoch_batches=epochs_of(x, 256), steps_per_epoch=12, init_data=x)
    with torch.no_grad():
        before, after = start.eval()(x).recon_loss.item(), model.eval()(x).recon_loss.item()
    assert after < 0.995 * before, (before, after)


def test_fit_keeps_the_weights_of_its_best_scoring_epoch():
    """A fit whose later epochs get worse (AdamW codebooks at a constant lr 3e-2) ends with the weights of the
    epoch with the lowest eval-mode recon of ``init_data``, not the last epoch's."""
    x = torch.nn.functional.normalize(clustered(n=2000, k=200, dim=32, noise=0.5), dim=-1)
    cfg = RQVAEConfig(input_dim=32, hidden_dims=(64,), codebook_size=32, ema=False)
    model = RQVAE(config=cfg)
    config = train(5, warmup_steps=0, lr=3e-2, min_lr_ratio=1.0)
    result = fit(model=model, train=config, epoch_batches=epochs_of(x, 256), steps_per_epoch=8, init_data=x)
    scores = [h.eval_recon for h in result.history]
    best = scores.index(min(scores))
    assert best < len(scores) - 1 and scores[-1] > 1.05 * min(scores), scores  # the case is real: the fit got worse
    assert result.kept_epoch == best
    with torch.no_grad():
        assert model.eval()(x).recon_loss.item() == pytest.approx(min(scores), rel=1e-5)
    # without init_data there is no eval-mode score: the last epoch's weights stay
    plain = fit(model=RQVAE(config=cfg), train=config, epoch_batches=epochs_of(x, 256), steps_per_epoch=8)
    assert plain.kept_epoch == len(plain.history) - 1 and all(h.eval_recon is None for h in plain.history)


def test_early_stop_on_recon_plateau_and_callback_sees_each_epoch():
    x = clustered(n=512, k=4)
    cfg = RQVAEConfig(**SMALL, codebook_size=4, ema=False)  # codebooks on the optimiser: lr 1e-9 freezes everything
    seen = []
    result = fit(
        model=RQVAE(config=cfg), train=train(50, warmup_steps=0, lr=1e-9, early_stop_patience=3),  # nothing can improve
        epoch_batches=epochs_of(x, 256), steps_per_epoch=2, on_epoch_end=lambda m: seen.append(m.epoch),
    )
    assert result.stopped_early and len(result.history) < 10
    assert seen == [h.epoch for h in result.history]


def test_fit_is_deterministic_for_a_seed():
    x = clustered(n=2048, k=50)
    runs = []
    for _ in range(2):
        cfg = RQVAEConfig(**SMALL, codebook_size=16, seed=3)
        model = RQVAE(config=cfg)
        fit(model=model, train=train(2), epoch_batches=epochs_of(x, 256), steps_per_epoch=8)
        runs.append(encode_array(model, x).codes)
    assert torch.equal(runs[0], runs[1])


def test_fit_repeats_bit_for_bit_with_several_threads():
    """The fit stage gives torch every CPU it holds: two fits with 2 threads must give the same weights.

    Indexing the codebook (``codebook[codes]``) has a scatter-add backward whose float sums
    are ordered by thread scheduling; the quantizer's one-hot product is a matrix product.
    """
    x = clustered(n=512, k=50)
    weights = []
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for _ in range(2):
            model = RQVAE(config=RQVAEConfig(**SMALL, codebook_size=64))
            fit(model=model, train=train(2, lr=1e-3), epoch_batches=epochs_of(x, batch_size=256), steps_per_epoch=8, init_data=x)
            weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(weights[0], weights[1])


def test_the_one_hot_codeword_equals_indexing_and_trains_the_same_codewords():
    """Forward values are exactly the gathered codewords; the codebook gradient matches indexing's up to float order."""
    from rqvae_core.quantize import VectorQuantizer

    g = torch.Generator().manual_seed(0)
    vq = VectorQuantizer(dim=16, codebook_size=8, kmeans_init=False, dead_code_window=0, mode="ste")
    x = torch.randn(64, 16, generator=g)
    out = vq(x)
    assert torch.equal(out.codeword, vq.codebook[out.codes].detach())
    out.codebook_loss.backward()
    expected = torch.zeros_like(vq.codebook).index_add_(0, out.codes, 2 * (vq.codebook[out.codes].detach() - x) / x.numel())
    assert torch.allclose(vq.embed.grad, expected, atol=1e-7)
