"""Grokking pack: task, model internals, progress measures and phase rules, each checked against
an independent computation."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from dynmon.experiments.grokking import PRESETS, Config
from dynmon.experiments.grokking import data as D
from dynmon.experiments.grokking import phases as PH
from dynmon.experiments.grokking import progress as P


# -- task ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_labels_match_brute_force(op):
    p = 7
    ds = D.make_dataset(p, op, 0.5, seed=0)
    expected = {}
    for a in range(p):
        for b in range(p):
            if op == "add":
                expected[a, b] = (a + b) % p
            elif op == "sub":
                expected[a, b] = (a - b) % p
            elif a and b and op == "mul":
                expected[a, b] = (a * b) % p
            elif a and b and op == "div":
                expected[a, b] = next(c for c in range(p) if (c * b) % p == a)
    got = {(int(a), int(b)): int(c) for (a, b, _), c in zip(ds.tokens, ds.labels, strict=True)}
    assert got == expected
    assert bool((ds.tokens[:, 2] == p).all())  # "=" is token p


@pytest.mark.parametrize(("op", "n"), [("add", 53 * 53), ("sub", 53 * 53), ("div", 52 * 52)])
def test_split_sizes_disjoint_and_seeded(op, n):
    ds = D.make_dataset(53, op, 0.3, seed=4)
    assert len(ds.labels) == n
    assert len(ds.train_idx) == round(0.3 * n) and len(ds.test_idx) == n - round(0.3 * n)
    both = torch.cat([ds.train_idx, ds.test_idx])
    assert torch.equal(both.sort().values, torch.arange(n))  # a partition
    state = torch.random.get_rng_state()
    again = D.make_dataset(53, op, 0.3, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert torch.equal(again.train_idx, ds.train_idx)
    assert not torch.equal(D.make_dataset(53, op, 0.3, seed=5).train_idx, ds.train_idx)


def test_add_grid_is_a_major():
    ds = D.make_dataset(5, "add", 0.5, 0)
    grid = ds.tokens[:, :2].reshape(5, 5, 2)
    assert torch.equal(grid[..., 0], torch.arange(5)[:, None].expand(5, 5))
    assert torch.equal(grid[..., 1], torch.arange(5)[None, :].expand(5, 5))


def test_config_validation_and_presets():
    with pytest.raises(ValueError, match="op"):
        Config(op="pow")
    with pytest.raises(ValueError, match="prime"):
        Config(p=51, op="div")
    Config(p=51, op="add")  # any modulus works for addition
    for name in ("quick", "standard", "nanda"):
        assert name in PRESETS
    nanda = PRESETS["nanda"]
    assert (nanda.p, nanda.train_frac, nanda.d_model, nanda.n_heads, nanda.d_mlp) == (
        113,
        0.3,
        128,
        4,
        512,
    )
    assert (nanda.lr, nanda.weight_decay, nanda.beta1, nanda.beta2) == (1e-3, 1.0, 0.9, 0.98)
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["quick"].p = 7  # type: ignore[misc]


# -- Fourier basis, Gini ---------------------------------------------------------------------
@pytest.mark.parametrize("p", [7, 8, 53, 113])
def test_fourier_basis_orthonormal(p):
    F = P.fourier_basis(p)
    assert F.shape == (p, p)
    torch.testing.assert_close(F @ F.T, torch.eye(p, dtype=torch.float64), atol=1e-12, rtol=0)
    rows = P.frequency_rows(p)
    assert len(rows) == P.n_frequencies(p) == p // 2
    assert sorted(i for r in rows for i in r) == list(range(1, p))


def test_fourier_basis_matches_fft():
    """A cosine of frequency k in x has its energy in row 2k-1 only; compare to numpy's FFT."""
    p, k = 13, 4
    x = np.arange(p)
    f = np.cos(2 * np.pi * k * x / p + 0.3)
    coeffs = P.fourier_basis(p).numpy() @ f
    norms = P.frequency_norms(torch.tensor(coeffs)).numpy()
    fft = np.abs(np.fft.rfft(f))[1:] * np.sqrt(2 / p)  # per-frequency norms from the FFT
    np.testing.assert_allclose(norms, fft, atol=1e-12)
    assert norms.argmax() == k - 1


def test_gini_known_values():
    assert float(P.gini(torch.ones(10))) == pytest.approx(0.0, abs=1e-12)
    n = 26
    assert float(P.gini(torch.eye(n)[3])) == pytest.approx((n - 1) / n)
    assert float(P.gini(torch.tensor([0.0, 0.0, 1.0, 1.0]))) == pytest.approx(0.5)
    x = torch.rand(40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mad = (x[:, None] - x[None, :]).abs().sum() / (2 * len(x) ** 2 * x.mean())  # mean-difference
    assert float(P.gini(x)) == pytest.approx(float(mad), rel=1e-9)
    with pytest.raises(ValueError):
        P.gini(torch.tensor([1.0, -1.0]))


def test_frequency_norms_of_sparse_embedding():
    """An embedding built from two frequencies has all its Fourier norm there: high Gini."""
    p, D_ = 53, 16
    F = P.fourier_basis(p)
    W = F[[5, 6, 19, 20]].T @ torch.randn(4, D_, dtype=torch.float64)  # freqs 3 and 10
    norms = P.embed_frequency_norms(W)
    assert set(torch.nonzero(norms > 1e-9).flatten().tolist()) == {2, 9}
    x1, x2 = sorted(float(v) for v in norms[[2, 9]])
    n = 26  # two nonzero values: G = ((n - 3) x1 + (n - 1) x2) / (n (x1 + x2))
    assert float(P.gini(norms)) == pytest.approx(((n - 3) * x1 + (n - 1) * x2) / (n * (x1 + x2)))
    W_L = W.T  # [D, p]: frequencies over the output axis
    torch.testing.assert_close(P.unembed_frequency_norms(W_L), norms)


# -- key frequencies --------------------------------------------------------------------------
def test_key_frequencies_from_synthetic_neurons():
    p, g = 23, torch.Generator().manual_seed(0)
    a = torch.arange(p).repeat_interleave(p).double()
    b = torch.arange(p).repeat(p).double()
    cols = []
    for i in range(40):  # 40 neurons on frequency 3 or 7, each a product/sum of its waves
        k = 3 if i % 2 else 7
        w = 2 * math.pi * k / p
        phase = torch.rand(2, generator=g, dtype=torch.float64) * 6
        cols.append(torch.cos(w * a + phase[0]) * torch.cos(w * b + phase[1]) + 2.0)
    cols += [torch.randn(p * p, generator=g, dtype=torch.float64) for _ in range(20)]  # noise
    acts = torch.stack(cols, dim=1)  # [p², 60]
    fractions = P.neuron_frequency_fractions(acts, p)
    assert fractions.shape == (60, p // 2)
    torch.testing.assert_close(fractions[:40].max(1).values, torch.ones(40, dtype=torch.float64))
    assert float(fractions[40:].max()) < 0.2  # noise spreads over ~K² cross terms
    assert bool((fractions.sum(1) <= 1 + 1e-9).all())
    assert P.key_frequencies(acts, p) == [3, 7]
    assert P.key_frequencies(acts[:, 40:], p) == []


# -- restricted and excluded loss ------------------------------------------------------------
def _grid(p):
    ds = D.make_dataset(p, "add", 0.5, seed=1)
    a, b = ds.tokens[:, 0].double(), ds.tokens[:, 1].double()
    return ds, a, b


def test_sum_directions_orthonormal():
    ds, *_ = _grid(11)
    G = P.sum_directions(ds.labels, 11)
    torch.testing.assert_close(G.T @ G, torch.eye(11, dtype=torch.float64), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="grid"):
        P.sum_directions(ds.labels[ds.train_idx], 11)


def test_fourier_algorithm_logits_are_all_restricted():
    """Logits Σ_k cos(w_k(a+b-c)) are the Fourier algorithm: restricted = logits, excluded = 0."""
    p, keys = 17, [2, 5, 8]
    ds, a, b = _grid(p)
    c = torch.arange(p).double()
    logits = sum(
        torch.cos(2 * math.pi * k / p * (a[:, None] + b[:, None] - c[None, :])) for k in keys
    )
    logits = 10 * logits  # [p², p]
    torch.testing.assert_close(P.restricted_logits(logits, ds.labels, p, keys), logits)
    torch.testing.assert_close(
        P.excluded_logits(logits, ds.labels, p, keys), torch.zeros_like(logits), atol=1e-9, rtol=0
    )
    assert float(P.restricted_loss(logits, ds.labels, p, keys)) < 1e-6  # it solves the task
    excluded = P.excluded_loss(logits, ds.labels, p, keys, ds.train_idx)
    assert float(excluded) == pytest.approx(math.log(p))  # nothing left: uniform
    # leaving one key frequency out of the restriction loses information
    assert float(P.restricted_loss(logits, ds.labels, p, keys[:1])) > 1e-3


def test_restricted_and_excluded_against_least_squares():
    """Random logits: the projections equal an independent least-squares fit on the directions,
    and restricted + excluded = logits + their mean over inputs, row by row."""
    p, keys = 13, [1, 4]
    ds, a, b = _grid(p)
    s = (a + b).numpy()
    logits = torch.randn(p * p, p, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cols = [np.ones_like(s)]
    for k in keys:
        cols += [np.cos(2 * np.pi * k * s / p), np.sin(2 * np.pi * k * s / p)]
    X = np.stack(cols, 1)  # [p², 1 + 2|keys|]
    coef, *_ = np.linalg.lstsq(X, logits.numpy(), rcond=None)
    restricted = P.restricted_logits(logits, ds.labels, p, keys)
    np.testing.assert_allclose(restricted.numpy(), X @ coef, atol=1e-10)
    excluded = P.excluded_logits(logits, ds.labels, p, keys)
    np.testing.assert_allclose(excluded.numpy(), logits.numpy() - X[:, 1:] @ coef[1:], atol=1e-10)
    mean = logits.mean(0, keepdim=True).expand_as(logits)
    torch.testing.assert_close(restricted + excluded, logits + mean)
    # coefficients kept for hindsight give the same restricted logits
    C = P.sum_coefficients(logits, ds.labels, p)
    torch.testing.assert_close(
        P.restricted_logits_from_coefficients(C, ds.labels, p, keys), restricted
    )
    # the losses are the cross-entropies of those logits on all rows / on train rows
    y, tr = ds.labels, ds.train_idx
    ce = torch.nn.functional.cross_entropy
    assert float(P.restricted_loss(logits, y, p, keys)) == pytest.approx(float(ce(restricted, y)))
    assert float(P.excluded_loss(logits, y, p, keys, tr)) == pytest.approx(
        float(ce(excluded[tr], y[tr]))
    )


def test_sub_uses_difference_directions():
    p, keys = 11, [3]
    ds = D.make_dataset(p, "sub", 0.5, seed=0)
    a, b = ds.tokens[:, 0].double(), ds.tokens[:, 1].double()
    c = torch.arange(p).double()
    logits = 5 * torch.cos(2 * math.pi * 3 / p * (a[:, None] - b[:, None] - c[None, :]))
    torch.testing.assert_close(P.restricted_logits(logits, ds.labels, p, keys), logits)


def test_losses_and_weight_norm():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    assert float(P.accuracy(logits, labels)) == pytest.approx(2 / 3)
    ref = -torch.log_softmax(logits.double(), -1)[torch.arange(3), labels].mean()
    assert float(P.cross_entropy(logits, labels, float64=True)) == pytest.approx(float(ref))
    assert P.cross_entropy(logits, labels, float64=True).dtype == torch.float64
    assert float(P.weight_norm_sq([torch.ones(2, 3), 2 * torch.ones(4)])) == pytest.approx(22.0)


# -- the model -------------------------------------------------------------------------------
def _manual_forward(model, tokens):
    """Logits and neuron activations at "=" recomputed from the weights (independent path)."""
    blk = model.blocks[0]
    att, mlp = blk.attn, blk.mlp
    r = model.W_E[tokens] + model.W_pos[None]  # [N, 3, D]
    q = torch.einsum("npd,hde->nphe", r, att.W_Q) + att.b_Q  # [N, 3, H, dh]
    k = torch.einsum("npd,hde->nphe", r, att.W_K) + att.b_K
    v = torch.einsum("npd,hde->nphe", r, att.W_V) + att.b_V
    scores = torch.einsum("nqhe,nkhe->nhqk", q, k) / math.sqrt(q.shape[-1])  # [N, H, 3, 3]
    scores = scores.masked_fill(torch.triu(torch.ones(3, 3, dtype=torch.bool), 1), -math.inf)
    z = torch.einsum("nhqk,nkhe->nqhe", scores.softmax(-1), v)  # [N, 3, H, dh]
    r = r + torch.einsum("nqhe,hed->nqd", z, att.W_O) + att.b_O
    post = torch.relu(r @ mlp.W_in + mlp.b_in)  # [N, 3, d_mlp]
    r = r + post @ mlp.W_out + mlp.b_out
    return (r @ model.W_U + model.b_U)[:, -1], post[:, -1]


def test_model_internals_match_its_forward():
    from dynmon.experiments.grokking.model import (
        build_model,
        forward_with_acts,
        trainable,
        unembed_weights,
    )

    cfg = Config(p=7, d_model=16, n_heads=2, d_mlp=32, bias=True, seed=3)
    model = build_model(cfg)
    with torch.no_grad():  # give the biases values so the check covers them
        for name, prm in model.named_parameters():
            if name.endswith("bias"):
                prm.normal_(generator=torch.Generator().manual_seed(len(name)))
    ds = D.make_dataset(7, "add", 0.5, 0)
    with torch.no_grad():
        logits, acts = forward_with_acts(model, ds.tokens)
        ref_logits, ref_acts = _manual_forward(model, ds.tokens)
        torch.testing.assert_close(logits, model(ds.tokens)[:, -1])
    assert logits.shape == (49, 7) and acts.shape == (49, 32)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(acts, ref_acts, atol=1e-5, rtol=1e-5)
    W = unembed_weights(model)
    assert W["W_E"].shape == (7, 16) and W["W_L"].shape == (32, 7)
    n_weights = sum(p.numel() for p in trainable(model))
    assert n_weights == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_biases_frozen_at_zero_by_default():
    from dynmon.experiments.grokking.model import build_model, trainable

    model = build_model(Config(p=7, d_model=16, n_heads=2, d_mlp=32))
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    assert biases and all(not p.requires_grad and float(p.abs().max()) == 0 for p in biases)
    assert all(p.ndim == 2 for p in trainable(model))


# -- phase rules ----------------------------------------------------------------------------
def test_first_at_or_above():
    assert PH.first_at_or_above([0, 10, 20, 30], [0.1, 0.96, 0.5, 1.0], 0.95) == 10
    assert PH.first_at_or_above([0, 10], [0.1, 0.2], 0.95) is None


def test_moved_step_on_a_step_signal():
    steps = np.arange(0, 2000, 10)
    rng = np.random.default_rng(0)
    x = 5 + 0.01 * rng.standard_normal(len(steps))
    x[steps >= 700] -= 1.0  # moves at 700
    out = PH.moved_step(steps, x, memorization_step=100, grokking_step=1200)
    assert out["moved_step"] == 700 and out["lead"] == 500
    assert out["lead_frac"] == pytest.approx(500 / 1100)
    assert out["change"] == pytest.approx(-1.0, abs=0.05)
    up = PH.moved_step(steps, x, 100, 1200, direction="up")
    assert up["moved_step"] is None
    flat = PH.moved_step(steps, 5 + 0.01 * rng.standard_normal(len(steps)), 100, 1200)
    assert flat["moved_step"] is None  # noise only: no move


def test_moved_step_on_log_scale():
    steps = np.arange(0, 1000, 10)
    x = np.where(steps < 300, 100.0, 100.0 * 0.9 ** ((steps - 300) / 10))  # decays from 300
    lin = PH.moved_step(steps, x, 100, 800)
    log = PH.moved_step(steps, x, 100, 800, log=True)
    # log: 10% of a 2.3-decade fall is 5 logs of decay; linear: the first 10% drop
    assert log["scale"] == "log10" and 340 <= log["moved_step"] <= 360
    assert log["change"] == pytest.approx(50 * np.log10(0.9), rel=0.1)
    assert lin["scale"] == "linear" and lin["moved_step"] in (300, 310)


def test_moved_step_ignores_a_single_spike():
    steps = np.arange(0, 1000, 10)
    x = np.zeros(len(steps))
    x[30] = 10.0  # one outlier at step 300
    x[steps >= 600] = 1.0
    assert PH.moved_step(steps, x, 0, 800)["moved_step"] == 600


def test_circuit_formation_and_cleanup_rules():
    steps = list(range(0, 1000, 10))
    restricted = [4.0 if s < 300 else 4.0 - (s - 300) / 100 for s in steps]
    test_acc = [0.1 if s < 800 else 1.0 for s in steps]
    # fell 10% below 4.0 (to 3.6) at step 340
    assert PH.circuit_formation_step(steps, restricted, test_acc, 100, 0.95) == 340
    assert PH.circuit_formation_step(steps, restricted, test_acc, None, 0.95) is None
    # weight norm: a short early dip, slow fall from 200, fast fall from 600 until grokking
    w = [100.0 - (0.01 * max(0, s - 200)) - (0.1 * max(0, s - 600)) for s in steps]
    dip = [0.07 * min(max(0, s - 350), max(0, 410 - s), 30) for s in steps]  # 0.08/step fall
    w = [x - d for x, d in zip(w, dip, strict=True)]
    step = PH.cleanup_step(steps, w, 340, 800)
    assert 600 <= step <= 620
    assert PH.cleanup_step(steps, w, 340, 380) == 350  # in the dip, were grokking at 380
    assert PH.cleanup_step(steps, w, 100, 150) is None  # not falling at grokking
    assert PH.cleanup_step(steps, w, None, 800) is None


def test_half_fall_step():
    steps = list(range(0, 100, 10))
    loss = [1.0, 4.0, 5.0, 6.0, 4.0, 2.9, 2.0, 0.1, 0.0, 0.0]
    assert PH.half_fall_step(steps, loss, 10, 70) == 50  # 2.9 < 6 / 2
    assert PH.half_fall_step(steps, loss, None, 70) is None


def test_circuit_tracker_fires_once_at_the_drop_below_the_post_memorisation_peak():
    tracker = PH.CircuitTracker(threshold=0.95)
    found = []
    for step, tr, te, rl in [
        (0, 0.0, 0.0, 9.0),  # before memorisation: not a peak
        (10, 0.96, 0.1, 2.5),  # first log at train accuracy >= T: the peak is tracked from here
        (20, 0.5, 0.1, 2.4),  # a dip in train accuracy does not reset memorisation
        (30, 1.0, 0.2, 2.2),  # 2.2 <= 90% of 2.5: circuit formation
        (40, 1.0, 0.3, 1.0),  # once only
    ]:
        found += tracker.update(step, {"train/acc": tr, "test/acc": te, "restricted_loss": rl})
    assert [(e["kind"], e["step"], e["peak"]) for e in found] == [
        ("circuit_formation_online", 30, 2.5)
    ]
    assert tracker.circuit_step == 30
    late = PH.CircuitTracker(threshold=0.95)  # test accuracy already at T: no circuit event
    assert late.update(0, {"train/acc": 1.0, "test/acc": 0.2, "restricted_loss": 2.0}) == []
    assert late.update(10, {"train/acc": 1.0, "test/acc": 0.99, "restricted_loss": 0.1}) == []
    assert late.update(20, {"train/acc": 1.0, "restricted_loss": float("nan")}) == []
