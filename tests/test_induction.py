"""Induction pack: data, task metrics and timing rules, each checked on hand-built inputs with
known answers or against an independent computation."""

from __future__ import annotations

import collections
import dataclasses
import math

import numpy as np
import pytest
import torch
from dynmon.experiments.induction import PRESETS, Config
from dynmon.experiments.induction import data as D
from dynmon.experiments.induction import model as M
from dynmon.experiments.induction import scores as S
from dynmon.experiments.induction import timing as TM

import dynmon
from dynmon.adapters.reference import pattern as reference_pattern
from dynmon.config import apply_overrides


def _batch(tokens: list[list[int]], starts: list[list[int]], segment_len: int) -> D.Batch:
    return D.Batch(torch.tensor(tokens), torch.tensor(starts), segment_len)


def _causal_uniform(B: int, H: int, T: int) -> torch.Tensor:
    """Every query attends uniformly to itself and all earlier positions: ``[B, H, T, T]``."""
    A = torch.ones(T, T).tril()
    A = A / A.sum(-1, keepdim=True)
    return A.expand(B, H, T, T).clone()


# -- config ------------------------------------------------------------------------------------
def test_presets_cover_one_to_four_layers_and_quick():
    assert {p.n_layers for n, p in PRESETS.items() if n != "quick"} == {1, 2, 3, 4}
    assert PRESETS["quick"].n_layers == 2 and PRESETS["quick"].steps <= 1500


def test_every_issue_key_is_settable():
    sets = [
        "n_layers=3",
        "d_model=32",
        "n_heads=2",
        "vocab=50",
        "seq_len=40",
        "segment_len=10",
        "repeats=3",
        "batch=8",
        "lr=1e-3",
        "weight_decay=0",
        "steps=10",
        "seed=7",
    ]
    cfg = apply_overrides(PRESETS["quick"], sets)
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.vocab) == (3, 32, 2, 50)
    assert (cfg.seq_len, cfg.segment_len, cfg.repeats, cfg.batch) == (40, 10, 3, 8)
    assert (cfg.lr, cfg.weight_decay, cfg.steps, cfg.seed) == (1e-3, 0.0, 10, 7)


@pytest.mark.parametrize(
    "changes",
    [
        {"repeats": 3, "segment_len": 24, "seq_len": 64},  # 72 tokens do not fit in 64
        {"d_model": 30, "n_heads": 4},
        {"repeats": 1},
        {"stable_frac": 1.5},
        {"embed_init": -1.0},
    ],
)
def test_config_rejects_impossible_settings(changes):
    with pytest.raises(ValueError):
        Config(**changes)


# -- data ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("T", "S", "R"), [(64, 24, 2), (30, 8, 3), (10, 5, 2)])
def test_copies_are_equal_disjoint_and_inside(T, S, R):
    cfg = Config(seq_len=T, segment_len=S, repeats=R, vocab=16)
    b = D.make_batch(cfg, torch.Generator().manual_seed(0), batch=200)
    assert b.tokens.shape == (200, T) and b.starts.shape == (200, R)
    assert bool((b.starts[:, 1:] - b.starts[:, :-1] >= S).all())  # ascending, no overlap
    assert int(b.starts.min()) >= 0 and int(b.starts.max()) <= T - S
    for row in range(200):
        copies = [b.tokens[row, s : s + S] for s in b.starts[row].tolist()]
        for c in copies[1:]:
            assert torch.equal(c, copies[0])


def test_arrangements_are_uniform():
    # T=5, S=2, R=2: 3 slots, choose 2 -> starts (0, 2), (0, 3), (1, 3), a third each
    starts = D.copy_starts(6000, 5, 2, 2, torch.Generator().manual_seed(1))
    counts = collections.Counter(map(tuple, starts.tolist()))
    assert set(counts) == {(0, 2), (0, 3), (1, 3)}
    for c in counts.values():
        assert abs(c / 6000 - 1 / 3) < 0.03


def test_batches_are_seeded_and_leave_the_global_rng_alone():
    cfg = Config()
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = D.make_batch(cfg, torch.Generator().manual_seed(5))
    b = D.make_batch(cfg, torch.Generator().manual_seed(5))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.starts, b.starts)
    assert torch.equal(torch.random.get_rng_state(), before)
    c = D.make_batch(cfg, torch.Generator().manual_seed(6))
    assert not torch.equal(a.tokens, c.tokens)


def test_occurrences_by_hand():
    b = _batch([[9, 1, 2, 9, 1, 2, 9, 9]], [[1, 4]], 2)
    copy, offset = D.occurrences(b)
    assert copy.tolist() == [[0, 1, 1, 0, 2, 2, 0, 0]]
    assert offset.tolist() == [[-1, 0, 1, -1, 0, 1, -1, -1]]


# -- task metrics ----------------------------------------------------------------------------
def test_split_losses_pick_the_right_targets():
    # T=8, segment of 2 at 1 and 4; the target of entry i is token i+1:
    # token:    0  1  2  3  4  5  6  7
    # copy:     0  1  1  0  2  2  0  0
    # offset:  -1  0  1 -1  0  1 -1 -1
    b = _batch([[9, 1, 2, 9, 1, 2, 9, 9]], [[1, 4]], 2)
    losses = torch.tensor([[10.0, 1.0, 20.0, 30.0, 2.0, 40.0, 50.0]])  # [1, T-1]
    out = S.split_losses(losses, b)
    assert out["loss_first"].item() == 1.0  # token 2 (copy 1, offset 1) from entry 1
    assert out["loss_repeated"].item() == 2.0  # token 5 (copy 2, offset 1) from entry 4
    assert out["loss_filler"].item() == pytest.approx((20 + 40 + 50) / 3)  # tokens 3, 6, 7
    assert out["loss"].item() == pytest.approx(losses.mean().item())


def test_token_losses_match_cross_entropy():
    logits = torch.randn(3, 7, 11, generator=torch.Generator().manual_seed(0))
    tokens = torch.randint(0, 11, (3, 7), generator=torch.Generator().manual_seed(1))
    per = M.token_losses(logits, tokens)
    assert per.shape == (3, 6)
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), tokens[:, 1:].flatten())
    assert per.mean().item() == pytest.approx(ref.item(), rel=1e-6)
    assert per[1, 2].item() == pytest.approx(
        -torch.log_softmax(logits[1, 2], -1)[tokens[1, 3]].item(), rel=1e-6
    )


def test_induction_score_of_a_perfect_induction_head_is_one():
    T, S_ = 12, 3
    b = _batch([[0] * T, [0] * T], [[0, 6], [2, 8]], S_)
    A = torch.zeros(2, 1, T, T)
    A[:, :, torch.arange(T), torch.arange(T)] = 1.0  # attend to self by default
    for row, (s1, s2) in enumerate(b.starts.tolist()):
        for o in range(S_):
            A[row, 0, s2 + o] = 0.0
            A[row, 0, s2 + o, s1 + o + 1] = 1.0
    score = S.induction_score(A, b)
    assert score.shape == (1,) and score.item() == pytest.approx(1.0)


def test_induction_score_of_uniform_attention_by_hand():
    # T=8, segment of 2 at 1 and 4: queries 4 and 5, each 1 earlier copy -> 1/5 and 1/6
    b = _batch([[9, 1, 2, 9, 1, 2, 9, 9]], [[1, 4]], 2)
    score = S.induction_score(_causal_uniform(1, 2, 8), b)
    assert score.tolist() == pytest.approx([(1 / 5 + 1 / 6) / 2] * 2)


def test_induction_score_sums_over_earlier_copies():
    # three copies of 2 tokens at 0, 2, 4 (T=6): queries 2, 3 (1 earlier copy), 4, 5 (2 each)
    b = _batch([[1, 2, 1, 2, 1, 2]], [[0, 2, 4]], 2)
    score = S.induction_score(_causal_uniform(1, 1, 6), b)
    expected = (1 / 3 + 1 / 4 + 2 / 5 + 2 / 6) / 4  # 4 queries (copies 2 and 3, offsets 0, 1)
    assert score.item() == pytest.approx(expected)


def test_induction_score_broadcasts_over_layers():
    b = _batch([[9, 1, 2, 9, 1, 2, 9, 9]], [[1, 4]], 2)
    A = torch.stack([_causal_uniform(1, 2, 8), torch.zeros(1, 2, 8, 8)])  # [L=2, B, H, T, T]
    score = S.induction_score(A, b)
    assert score.shape == (2, 2) and score[1].abs().max().item() == 0.0


def test_prev_token_score():
    T = 6
    A = torch.zeros(1, 2, T, T)
    A[0, 0, 0, 0] = 1.0
    A[0, 0, torch.arange(1, T), torch.arange(T - 1)] = 1.0  # head 0: previous token
    A[0, 1] = _causal_uniform(1, 1, T)[0, 0]  # head 1: uniform
    score = S.prev_token_score(A)
    assert score[0].item() == pytest.approx(1.0)
    assert score[1].item() == pytest.approx(sum(1 / (i + 1) for i in range(1, T)) / (T - 1))


def _dense_copying(W_E, W_U, W_V, W_O) -> np.ndarray:
    out = []
    for h in range(W_V.shape[0]):
        full = (W_E @ W_V[h] @ W_O[h] @ W_U).double().numpy()  # [V, V]
        lam = np.linalg.eigvals(full)
        out.append(lam.real.sum() / np.abs(lam).sum())
    return np.array(out)


def test_copying_score_known_answers():
    V = D_ = 6
    dh = 2
    I_ = torch.eye(V)
    W_V = torch.zeros(3, D_, dh)
    W_O = torch.zeros(3, dh, D_)
    W_V[:, 0, 0] = W_V[:, 1, 1] = 1.0
    W_O[0, 0, 0] = W_O[0, 1, 1] = 2.0  # head 0: copies (scaled identity on a plane)
    W_O[1, 0, 0] = W_O[1, 1, 1] = -1.0  # head 1: anti-copies
    W_O[2, 0, 1], W_O[2, 1, 0] = 1.0, -1.0  # head 2: a quarter turn, eigenvalues ±i
    score = S.copying_score(I_, I_, W_V, W_O)
    assert score.tolist() == pytest.approx([1.0, -1.0, 0.0], abs=1e-12)


def test_copying_score_matches_dense_eigenvalues():
    g = torch.Generator().manual_seed(0)
    V, D_, H, dh = 20, 12, 3, 4
    W_E, W_U = torch.randn(V, D_, generator=g), torch.randn(D_, V, generator=g)
    W_V, W_O = torch.randn(H, D_, dh, generator=g), torch.randn(H, dh, D_, generator=g)
    got = S.copying_score(W_E, W_U, W_V, W_O).numpy()
    assert got == pytest.approx(_dense_copying(W_E, W_U, W_V, W_O), abs=1e-6)
    assert np.all(np.abs(got) <= 1.0)


# -- the model ---------------------------------------------------------------------------------
TINY = Config(n_layers=2, d_model=16, n_heads=2, vocab=16, seq_len=12, segment_len=4, batch=4)


def test_hooked_patterns_are_the_models_attention():
    model = M.build_model(TINY)
    b = D.make_batch(TINY, torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, patterns = M.forward_with_patterns(model, b.tokens)
        assert torch.equal(logits, model(b.tokens))
        heads = dynmon.heads(model)
        x = model.W_E[b.tokens] + model.W_pos[: TINY.seq_len]  # [B, T, D] residual into layer 0
        expected = reference_pattern(heads[0], x, causal=True)  # [B, H, T, T]
    assert patterns.shape == (2, 4, 2, 12, 12)
    torch.testing.assert_close(patterns[0], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(patterns.sum(-1), torch.ones(2, 4, 2, 12))


def test_probe_scores_shapes_and_ranges():
    model = M.build_model(dataclasses.replace(TINY, embed_init=0.0))  # small logits at init
    probe = D.make_batch(TINY, torch.Generator().manual_seed(0), batch=8)
    with torch.no_grad():
        s = S.probe_scores(model, probe)
    for k in ("induction_heads", "prev_token_heads", "copying_heads"):
        assert s[k].shape == (2, 2)
    assert 0.0 <= s["induction_heads"].min() and s["induction_heads"].max() <= 1.0
    # an untrained model is near chance: loss ≈ ln V everywhere, ICL ≈ 0
    assert s["loss_first"].item() == pytest.approx(math.log(16), abs=0.3)
    assert abs(s["icl_score"].item()) < 0.3


def test_task_metric_keys():
    model = M.build_model(TINY)
    probe = D.make_batch(TINY, torch.Generator().manual_seed(0), batch=8)
    spec = S.task_metric(probe)
    with torch.no_grad():
        out = spec.compute(dynmon.LookContext(step=0, model=model))
    for k in ("probe/loss_repeated", "probe/icl_score", "probe/induction_score"):
        assert k in out.scalars
    assert "dynmon/induction_score/L1.H0.attn" in out.scalars
    assert "dynmon/copying_score/L0.H1.OV" in out.scalars
    assert out.arrays["dynmon/prev_token_score/attn"].shape == (2, 2)


# -- timing ----------------------------------------------------------------------------------
def test_steepest_drop_of_a_sigmoid():
    steps = np.arange(0, 2000, 10)
    loss = 1.0 + 3.0 / (1.0 + np.exp((steps - 830) / 40.0))
    assert abs(TM.steepest_drop(steps, loss) - 830) <= 10


def test_settle_step_rule():
    steps = np.arange(0, 1000, 25)
    d = np.full(len(steps), 0.05)
    d[:4] = [0.0, 0.5, 0.4, 0.3]  # early transient, peak 0.5 at step 25
    d[20:23] = 0.3  # a bump at steps 500-550: above 0.05 + 0.25 * 0.45
    out = TM.settle(steps, d, 0.25, smooth=1)
    assert out["peak_step"] == 25 and out["floor"] == pytest.approx(0.05)
    assert out["threshold"] == pytest.approx(0.05 + 0.25 * 0.45)
    assert out["step"] == 575  # the first look after the last one above the threshold
    assert TM.settle_step(steps, d, 0.9, smooth=1) == 50  # a looser threshold ignores the bump
    assert TM.settle_step(steps, np.full(len(steps), 0.1), 0.25) is None  # never moved
    assert TM.settle_step([], [], 0.25) is None


def test_largest_cliff_and_lead():
    events = [
        {"kind": "cliff", "key": "probe/loss_repeated", "at": 300, "step": 350, "size": 0.4},
        {"kind": "cliff", "key": "probe/loss_repeated", "at": 800, "step": 900, "size": 2.5},
        {"kind": "cliff", "key": "loss", "at": 810, "step": 900, "size": 9.0},
    ]
    assert TM.largest_cliff(events, "probe/loss_repeated")["at"] == 800
    assert TM.largest_cliff(events, "other") is None
    assert TM.lead(800, 650) == 150 and TM.lead(None, 650) is None


def test_config_is_a_plain_frozen_dataclass():
    cfg = PRESETS["quick"]
    assert dataclasses.is_dataclass(cfg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]


def test_embeddings_start_at_the_configured_scale_and_the_rest_as_transformer_lens():
    from dynmon.experiments.induction.model import build_model

    big = build_model(Config(embed_init=1.0, seed=3))
    tl = build_model(Config(embed_init=0.0, seed=3))
    again = build_model(Config(embed_init=1.0, seed=3))
    for w in (big.W_E, big.W_pos):  # 4096 draws: the sample std is within a few % of 1
        assert float(w.std()) == pytest.approx(1.0, rel=0.05)
    for w in (tl.W_E, tl.W_pos):  # TransformerLens' GPT-2 init, 0.8 / sqrt(d_model)
        assert float(w.std()) == pytest.approx(0.8 / 64**0.5, rel=0.05)
    assert torch.equal(big.W_E, again.W_E) and torch.equal(big.W_pos, again.W_pos)  # seeded
    assert torch.equal(big.blocks[0].attn.W_Q, tl.blocks[0].attn.W_Q)  # only embeddings change


def test_distance_to_final_is_the_seed_papers_measure_on_dense_matrices():
    """The pack's batched hindsight distance (via dynmon.analyze) against dense pinv per head."""
    from dynmon.experiments.induction.train import distance_to_final

    gen = torch.Generator().manual_seed(0)
    L, H, D_, dh = 2, 3, 8, 2
    history = {
        s: {
            c: (torch.randn(L, H, D_, dh, generator=gen), torch.randn(L, H, D_, dh, generator=gen))
            for c in ("QK", "OV")
        }
        for s in (0, 10, 20)
    }
    ref = distance_to_final(history)
    assert ref["steps"] == [0, 10, 20]
    for c in ("QK", "OV"):
        A_f, B_f = (x.double() for x in history[20][c])
        for i, s in enumerate(ref["steps"]):
            A, B = (x.double() for x in history[s][c])
            for layer in range(L):
                for head in range(H):
                    M = A[layer, head] @ B[layer, head].T  # [D, D]
                    M_f = A_f[layer, head] @ B_f[layer, head].T
                    resid = M_f @ (torch.eye(D_, dtype=torch.float64) - torch.linalg.pinv(M) @ M)
                    want = float(torch.linalg.norm(resid) / torch.linalg.norm(M_f))
                    assert ref[c][i, layer, head] == pytest.approx(want, abs=1e-5)
        assert np.allclose(ref[c][-1], 0.0, atol=1e-5)  # the final matrix against itself
