"""Head-role scores (dynmon.metrics.roles) and formation events (dynmon.role_events), checked
against closed forms, dense loops and hand-built patterns."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynmon.metrics import roles as R
from dynmon.role_events import RoleEventConfig, RoleEvents


def _uniform(B: int, H: int, T: int) -> torch.Tensor:
    """Causal uniform attention ``[B, H, T, T]`` (float64)."""
    A = torch.ones(T, T, dtype=torch.float64).tril()
    return (A / A.sum(-1, keepdim=True)).expand(B, H, T, T).clone()


def _probe(seed: int, V: int, T: int, B: int, S: int, reps: int) -> R.RepeatProbe:
    return R.make_probe(V, T, B, torch.Generator().manual_seed(seed), segment_len=S, repeats=reps)


probes = st.builds(
    lambda seed, T, B, frac, reps: _probe(seed, 20, T, B, max(2, int(T * frac / reps)), reps),
    st.integers(0, 10_000),
    st.integers(8, 40),
    st.integers(1, 4),
    st.floats(0.2, 0.9),
    st.integers(2, 3),
)


# -- the probe --
@settings(max_examples=40, deadline=None)
@given(probes)
def test_probe_copies_are_equal_disjoint_and_inside(p):
    B, T = p.tokens.shape
    S, starts = p.segment_len, p.starts
    assert (starts[:, 1:] - starts[:, :-1] >= S).all() and (starts[:, -1] + S <= T).all()
    for b in range(B):
        copies = [p.tokens[b, s : s + S] for s in starts[b].tolist()]
        assert all(torch.equal(c, copies[0]) for c in copies)
    copy, offset = R.occurrences(p)
    assert int((copy > 0).sum()) == B * starts.shape[1] * S
    assert ((offset >= 0) == (copy > 0)).all()


def test_probe_is_drawn_from_the_generator_only():
    before = torch.get_rng_state()
    a, b = _probe(3, 50, 32, 4, 8, 2), _probe(3, 50, 32, 4, 8, 2)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.starts, b.starts)
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize(
    ("tokens", "starts", "S", "match"),
    [
        ([[1, 2, 1, 2]], [[0, 1]], 2, "overlap"),
        ([[1, 2, 1, 2]], [[0, 3]], 2, "overlap"),  # runs past the end
        ([[1, 2, 1, 2]], [[0]], 2, "at least 2 copies"),
    ],
)
def test_check_probe_refuses_bad_probes(tokens, starts, S, match):
    bad = R.RepeatProbe(torch.tensor(tokens), torch.tensor(starts), S)
    with pytest.raises(ValueError, match=match):
        R.check_probe(bad)
    with pytest.raises(TypeError, match="tokens"):
        R.check_probe(torch.zeros(2, 4))


def test_make_probe_refuses_a_segment_that_does_not_fit():
    with pytest.raises(ValueError, match="repeats"):
        R.make_probe(10, 8, 1, torch.Generator(), segment_len=5, repeats=2)


# -- scores of uniform attention: the closed forms --
@settings(max_examples=40, deadline=None)
@given(probes)
def test_uniform_attention_scores_equal_their_closed_forms(p):
    B, T = p.tokens.shape
    A = _uniform(B, 2, T)
    chance = R.uniform_chance(p)
    got = {
        "prev_token_score": R.prev_token_score(A),
        "induction_score": R.induction_score(A, p),
        "duplicate_token_score": R.duplicate_token_score(A, p),
        "attn_entropy": R.attention_entropy(A),
        "sink_mass": R.sink_mass(A),
    }
    for name, value in got.items():
        assert value.shape == (2,)
        assert value.tolist() == pytest.approx([chance[name]] * 2, rel=1e-12), name


# -- scores against dense loops --
def _dense_scores(A: np.ndarray, p: R.RepeatProbe) -> dict[str, np.ndarray]:
    """Every score by explicit loops over sequences, queries and earlier copies."""
    B, H, T, _ = A.shape
    S, starts = p.segment_len, p.starts.tolist()
    out = {k: np.zeros(H) for k in ("prev", "ind", "dup", "ent", "sink")}
    for h in range(H):
        ind = dup = 0.0
        n = 0
        for b in range(B):
            for k in range(1, len(starts[b])):
                for o in range(S):
                    i = starts[b][k] + o
                    ind += sum(A[b, h, i, starts[b][j] + o + 1] for j in range(k))
                    dup += sum(A[b, h, i, starts[b][j] + o] for j in range(k))
                    n += 1
        out["ind"][h], out["dup"][h] = ind / n, dup / n
        rows = A[:, h, 1:, :]  # [B, T-1, T]
        with np.errstate(divide="ignore", invalid="ignore"):
            ent = -np.where(rows > 0, rows * np.log(rows), 0.0).sum(-1)
        out["ent"][h] = ent.mean()
        out["prev"][h] = np.mean([A[b, h, i, i - 1] for b in range(B) for i in range(1, T)])
        out["sink"][h] = np.mean([A[b, h, i, 0] for b in range(B) for i in range(1, T)])
    return out


@settings(max_examples=25, deadline=None)
@given(probes, st.integers(0, 1000))
def test_scores_match_dense_loops_on_random_causal_patterns(p, seed):
    B, T = p.tokens.shape
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, 3, T, T, generator=g, dtype=torch.float64) * 3
    A = logits.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -math.inf).softmax(-1)
    want = _dense_scores(A.numpy(), p)
    np.testing.assert_allclose(R.prev_token_score(A), want["prev"], rtol=1e-10)
    np.testing.assert_allclose(R.induction_score(A, p), want["ind"], rtol=1e-10)
    np.testing.assert_allclose(R.duplicate_token_score(A, p), want["dup"], rtol=1e-10)
    np.testing.assert_allclose(R.attention_entropy(A), want["ent"], rtol=1e-10)
    np.testing.assert_allclose(R.sink_mass(A), want["sink"], rtol=1e-10)


def test_ideal_patterns_score_one():
    p = _probe(0, 30, 24, 3, 6, 2)
    B, T = p.tokens.shape
    prev = torch.zeros(B, 1, T, T)
    prev[:, 0, 0, 0] = 1.0
    prev[:, 0, torch.arange(1, T), torch.arange(T - 1)] = 1.0
    ind, dup = torch.eye(T).expand(B, 1, T, T).clone(), torch.eye(T).expand(B, 1, T, T).clone()
    for b, (s1, s2) in enumerate(p.starts.tolist()):
        for o in range(p.segment_len):
            ind[b, 0, s2 + o], dup[b, 0, s2 + o] = 0.0, 0.0
            ind[b, 0, s2 + o, s1 + o + 1] = 1.0
            dup[b, 0, s2 + o, s1 + o] = 1.0
    assert R.prev_token_score(prev).item() == pytest.approx(1.0)
    assert R.induction_score(ind, p).item() == pytest.approx(1.0)
    assert R.duplicate_token_score(dup, p).item() == pytest.approx(1.0)
    assert R.sink_mass(prev).item() == pytest.approx(1 / (T - 1))  # only row 1 looks at 0
    assert R.attention_entropy(prev).item() == pytest.approx(0.0, abs=1e-12)


# -- copying score --
def _dense_copying(W_E, W_U, W_V, W_O) -> np.ndarray:
    out = []
    for h in range(W_V.shape[0]):
        lam = np.linalg.eigvals((W_E @ W_V[h] @ W_O[h] @ W_U).double().numpy())  # [V, V]
        out.append(lam.real.sum() / np.abs(lam).sum())
    return np.array(out)


@pytest.mark.parametrize("limit", [R.F64_GRAM_LIMIT, 0])  # float64 Gram, and the float32 one
def test_copying_score_matches_dense_eigenvalues(monkeypatch, limit):
    monkeypatch.setattr(R, "F64_GRAM_LIMIT", limit)
    g = torch.Generator().manual_seed(0)
    V, D, H, dh = 30, 12, 3, 4
    W_E, W_U = torch.randn(V, D, generator=g), torch.randn(D, V, generator=g)
    W_V, W_O = torch.randn(H, D, dh, generator=g), torch.randn(H, dh, D, generator=g)
    got = R.copying_score(W_E, W_U, W_V, W_O).numpy()
    np.testing.assert_allclose(got, _dense_copying(W_E, W_U, W_V, W_O), atol=1e-5)
    assert np.all(np.abs(got) <= 1.0)


def test_copying_score_of_an_identity_head_is_one():
    V = D = 5
    W_V, W_O = torch.eye(D)[None, :, :2], 3 * torch.eye(D)[None, :2, :]  # [1, D, 2], [1, 2, D]
    assert R.copying_score(torch.eye(V), torch.eye(V), W_V, W_O).item() == pytest.approx(1.0)


# -- losses --
def test_split_losses_and_icl_score_by_hand():
    # segment of 2 at 1 and 4 in T=8; entry i predicts token i+1
    p = R.RepeatProbe(torch.tensor([[9, 1, 2, 9, 1, 2, 9, 9]]), torch.tensor([[1, 4]]), 2)
    losses = torch.tensor([[10.0, 1.0, 20.0, 30.0, 2.0, 40.0, 50.0]])
    out = R.split_losses(losses, p)
    assert out["loss_first"].item() == 1.0 and out["loss_repeated"].item() == 2.0
    assert out["icl_score"].item() == 1.0
    assert out["loss_filler"].item() == pytest.approx((20 + 40 + 50) / 3)


# -- formation events --
def _sigmoid_scores(steps, mid: float, heads: int = 2) -> list[np.ndarray]:
    """Head 1 of layer 1 rises from 0.05 to 0.8 around ``mid``; every other head stays at 0.05."""
    out = []
    for s in steps:
        a = np.full((2, heads), 0.05)
        a[1, 1] = 0.05 + 0.75 / (1 + math.exp(-(s - mid) / 40))
        out.append(a)
    return out


def test_role_formed_at_the_first_look_above_the_threshold():
    steps = list(range(0, 2000, 25))
    scores = _sigmoid_scores(steps, 1000)
    det = RoleEvents(RoleEventConfig(roles=("induction_score",), threshold=0.4, hold=2))
    events = [
        e for s, a in zip(steps, scores, strict=True) for e in det.update(s, {"induction_score": a})
    ]
    formed = [e for e in events if e["kind"] == "role_formed"]
    assert len(formed) == 1
    (ev,) = formed
    first_above = next(s for s, a in zip(steps, scores, strict=True) if a[1, 1] >= 0.4)
    assert ev["at"] == first_above and ev["step"] == first_above + 25  # held for 2 looks
    assert ev["head"] == "L1.H1" and ev["key"] == "dynmon/induction_score/L1.H1.attn"
    assert ev["message"] == f"induction head L1.H1 formed at step {first_above:,} (score " + (
        f"{ev['score']:.2f})"
    )
    onsets = [e for e in events if e["kind"] == "role_onset"]
    assert [e["head"] for e in onsets] == ["L1.H1"]
    assert onsets[0]["at"] < first_above  # the take-off starts before the threshold


def test_role_events_state_round_trip_continues_a_run():
    steps = list(range(0, 2000, 25))
    scores = _sigmoid_scores(steps, 900)
    whole = RoleEvents()
    want = [
        e
        for s, a in zip(steps, scores, strict=True)
        for e in whole.update(s, {"induction_score": a})
    ]
    first = RoleEvents()
    got = [
        e
        for s, a in zip(steps[:30], scores[:30], strict=True)
        for e in first.update(s, {"induction_score": a})
    ]
    resumed = RoleEvents.from_state(first.state_dict())
    got += [
        e
        for s, a in zip(steps[30:], scores[30:], strict=True)
        for e in resumed.update(s, {"induction_score": a})
    ]
    assert got == want and any(e["kind"] == "role_formed" for e in got)


def test_role_event_config_refuses_nonsense():
    with pytest.raises(ValueError, match="unknown roles"):
        RoleEventConfig(roles=("copying",))
    with pytest.raises(ValueError, match="threshold"):
        RoleEventConfig(threshold=0.0)
