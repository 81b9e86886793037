"""The ``head_roles`` metric in the Monitor: equal to the induction pack's former scores, ideal
hand-built heads score above 0.9 and uniform ones at chance, training is untouched, events are
recorded and a resumed run keeps its probe."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TinyLM
from torch import nn

import dynmon
from dynmon.metrics import roles as R
from dynmon.metrics.head_roles import HEAD_ROLES, default_probe

transformers = pytest.importorskip("transformers")


def _rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in open(run_dir / "metrics.jsonl")]


def _events(run_dir) -> list[dict]:
    path = run_dir / "events.jsonl"
    return [json.loads(line) for line in open(path)] if path.exists() else []


# -- one source of truth: the pack's scores as they were computed before head_roles ----------------
def _former_pack_scores(model, probe) -> dict[str, np.ndarray]:
    """The induction pack's own code before it used head_roles (hooks on hook_pattern, its
    formulas), kept here as the independent reference."""
    store = {}
    handles = [
        b.attn.hook_pattern.register_forward_hook(
            lambda _m, _i, o, i=i: store.__setitem__(i, o.detach())
        )
        for i, b in enumerate(model.blocks)
    ]
    with torch.no_grad():
        logits = model(probe.tokens)
    for h in handles:
        h.remove()
    pats = torch.stack([store[i] for i in range(len(store))])  # [L, B, H, T, T]
    starts, S = probe.starts, probe.segment_len
    Bn, Rn = starts.shape
    later, earlier = torch.tril_indices(Rn, Rn, offset=-1)
    o = torch.arange(S)
    q = (starts[:, later, None] + o).reshape(-1)
    k = (starts[:, earlier, None] + o + 1).reshape(-1)
    seq = torch.arange(Bn)[:, None, None].expand(Bn, len(later), S).reshape(-1)
    ind = pats.transpose(-4, -3)[..., seq, q, k].sum(-1) / (Bn * (Rn - 1) * S)
    prev = pats.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1).mean(-2)
    hs = dynmon.heads(model)
    W_V = torch.stack([h.W_V for h in hs]).double()
    W_O = torch.stack([h.W_O for h in hs]).double()
    core = W_O @ (model.W_U.detach().double() @ model.W_E.detach().double()) @ W_V
    lam = torch.linalg.eigvals(core)
    copying = lam.real.sum(-1) / lam.abs().sum(-1)
    V = logits.shape[-1]
    losses = F.cross_entropy(
        logits[:, :-1].reshape(-1, V), probe.tokens[:, 1:].reshape(-1), reduction="none"
    ).view(Bn, -1)
    rel = torch.arange(probe.tokens.shape[1]) - starts[:, :, None]
    inside = (rel >= 0) & (rel < S)
    copy = (inside * torch.arange(1, Rn + 1)[None, :, None]).sum(1)[:, 1:]
    offset = torch.where(inside, rel, 0).sum(1)[:, 1:]
    first = losses[(copy == 1) & (offset >= 1)].mean()
    repeated = losses[(copy >= 2) & (offset >= 1)].mean()
    return {
        "induction_score": ind.numpy(),
        "prev_token_score": prev.numpy(),
        "copying_score": copying.numpy(),
        "icl_score": float(repeated - first),
        "loss_repeated": float(repeated),
    }


def test_head_roles_equals_the_induction_packs_former_scores():
    from dynmon.experiments.induction import Config
    from dynmon.experiments.induction.data import make_batch
    from dynmon.experiments.induction.model import build_model

    cfg = Config(n_layers=2, d_model=32, n_heads=4, vocab=32, seq_len=24, segment_len=8)
    model = build_model(cfg)
    with torch.no_grad():  # move the heads off their init so the scores differ per head
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    probe = make_batch(cfg, torch.Generator().manual_seed(5), batch=16)
    want = _former_pack_scores(model, probe)
    ctx = dynmon.LookContext(step=0, model=model, options={"roles_probe": probe})
    with torch.no_grad():
        out = HEAD_ROLES.compute(ctx)
    for name, target in [
        ("induction_score", "attn"),
        ("prev_token_score", "attn"),
        ("copying_score", "OV"),
    ]:
        got = out.arrays[f"dynmon/{name}/{target}"].double().numpy()
        np.testing.assert_allclose(got, want[name], atol=1e-6, rtol=0)
    assert float(out.scalars["dynmon/icl_score"]) == pytest.approx(want["icl_score"], abs=1e-6)
    assert float(out.scalars["dynmon/icl_loss_repeated"]) == pytest.approx(
        want["loss_repeated"], abs=1e-6
    )


# -- ideal heads, built by construction ------------------------------------------------------------
class Attn(nn.Module):
    """nanoGPT-style causal self-attention (fused c_attn, c_proj, SDPA)."""

    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.n_head, self.d = h, d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, -1).transpose(1, 2) for z in (q, k, v))  # (B,nh,T,hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, d))  # (B, T, D)


class IdealNet(nn.Module):
    """Residual stream = [token one-hot (V) | position one-hot (T) | previous token (V)].

    Layer 0 head 0 attends to the previous position and writes its token into the third block
    (a previous-token head); layer 1 head 0 matches the current token against that block and
    copies the token it finds into the logits (an induction head). Heads 1 have zero weights:
    uniform attention.
    """

    def __init__(self, V: int = 48, T: int = 32, beta: float = 30.0) -> None:
        super().__init__()
        D, H = 2 * V + T, 2
        dh = D // H
        self.block_size = T
        self.wte, self.wpe = nn.Embedding(V, D), nn.Embedding(T, D)
        self.attn = nn.ModuleList([Attn(D, H), Attn(D, H)])
        self.lm_head = nn.Linear(D, V, bias=False)
        s = beta * math.sqrt(dh)  # logit beta after the 1/sqrt(dh) scaling
        with torch.no_grad():
            for p in self.parameters():
                p.zero_()
            self.wte.weight[:, :V] = torch.eye(V)
            self.wpe.weight[:, V : V + T] = torch.eye(T)
            q, k, v = self.attn[0].c_attn.weight.split(D, 0)  # head 0 rows are 0..dh-1
            for e in range(T):
                q[e, V + e] = s  # query: my position
            for j in range(T - 1):
                k[j + 1, V + j] = 1.0  # key: position j answers query j + 1
            for t in range(V):
                v[t, t] = 1.0  # value: the token
                self.attn[0].c_proj.weight[V + T + t, t] = 1.0  # written to the third block
            q, k, v = self.attn[1].c_attn.weight.split(D, 0)
            for t in range(V):
                q[t, t] = s  # query: my token
                k[t, V + T + t] = 1.0  # key: the token before you
                v[t, t] = 1.0  # value: your token ...
                self.attn[1].c_proj.weight[t, t] = 10.0  # ... raised in my logits: a copier
            self.lm_head.weight[:, :V] = torch.eye(V)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))  # [B, T, D]
        for a in self.attn:
            x = x + a(x)
        return self.lm_head(x)  # [B, T, V]


def _distinct_probe(V: int, T: int, B: int, S: int, seed: int) -> R.RepeatProbe:
    """A segment written twice among filler tokens that never repeat, the first copy after 0."""
    g = torch.Generator().manual_seed(seed)
    tokens, starts = [], []
    for _ in range(B):
        perm = torch.randperm(V, generator=g)
        seg, filler = perm[:S], perm[S : S + T - 2 * S].tolist()
        s1 = int(torch.randint(1, T - 2 * S + 1, (1,), generator=g))
        s2 = int(torch.randint(s1 + S, T - S + 1, (1,), generator=g))
        row = filler[:s1] + seg.tolist()
        row += filler[s1 : s1 + s2 - s1 - S] + seg.tolist() + filler[s1 + s2 - s1 - S :]
        tokens.append(row)
        starts.append([s1, s2])
    return R.RepeatProbe(torch.tensor(tokens), torch.tensor(starts), S)


def test_ideal_heads_score_above_point_nine_and_uniform_heads_at_chance(tmp_path):
    V, T = 48, 32
    model = IdealNet(V, T)
    probe = _distinct_probe(V, T, 6, 8, seed=0)
    mon = dynmon.Monitor(
        model,
        run_dir=tmp_path,
        metrics={"economy": False, "head_roles": dynmon.every(1)},
        options={"roles_probe": probe},
        strict=True,
    )
    with mon:
        mon.step(0)
    row = _rows(tmp_path)[0]
    assert row["dynmon/prev_token_score/L0.H0.attn"] > 0.9
    assert row["dynmon/induction_score/L1.H0.attn"] > 0.9
    chance = R.uniform_chance(probe)
    for layer in (0, 1):
        for name in ("prev_token_score", "induction_score", "duplicate_token_score"):
            got = row[f"dynmon/{name}/L{layer}.H1.attn"]
            assert got == pytest.approx(chance[name], rel=1e-5), (layer, name)
    assert row["dynmon/copying_score/L1.H0.OV"] > 0.9
    assert row["dynmon/icl_score"] < -3.0  # it predicts the repeated tokens


# -- events through the Monitor, and a resumed run ------------------------------------------------
def test_formation_events_land_in_events_jsonl(tmp_path):
    model = IdealNet()
    probe = _distinct_probe(48, 32, 4, 8, seed=1)
    mon = dynmon.Monitor(
        model,
        run_dir=tmp_path,
        metrics={"economy": False, "head_roles": dynmon.every(1)},
        options={"roles_probe": probe},
        strict=True,
    )
    with mon:
        for s in range(4):
            mon.step(s)
    formed = {e["head"]: e for e in _events(tmp_path) if e["kind"] == "role_formed"}
    assert formed["L0.H0"]["role"] == "prev_token_score"
    assert formed["L1.H0"]["role"] == "induction_score"
    ev = formed["L1.H0"]
    assert (ev["at"], ev["step"]) == (0, 1)  # above the threshold from the first look, held 2
    assert ev["score"] > 0.9
    assert ev["message"] == f"induction head L1.H0 formed at step 0 (score {ev['score']:.2f})"
    assert {"L0.H1", "L1.H1"}.isdisjoint(formed)


def _gpt2(seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    base = {"n_embd": 32, "n_head": 4, "n_layer": 2, "n_positions": 16, "vocab_size": 40}
    cfg = transformers.GPT2Config(**{**base, "bos_token_id": 0, "eos_token_id": 0, **kw})
    return transformers.GPT2LMHeadModel(cfg)


def test_default_probe_from_vocabulary_and_context():
    g = torch.Generator().manual_seed(0)
    p = default_probe(_gpt2(), {}, g)
    assert p.tokens.shape == (8, 16) and p.segment_len == 4 and int(p.tokens.max()) < 40
    big = default_probe(_gpt2(n_positions=512), {"roles_batch": 2}, g)
    assert big.tokens.shape == (2, 128)
    with pytest.raises(ValueError, match="context length"):
        default_probe(_gpt2(), {"roles_seq_len": 17}, g)


def test_a_resumed_monitor_keeps_its_probe(tmp_path):
    model = _gpt2()
    whole = dynmon.Monitor(
        model, run_dir=tmp_path / "a", metrics={"economy": False, "head_roles": 1}, strict=True
    )
    with whole:
        for s in range(3):
            whole.step(s)
    first = dynmon.Monitor(
        model, run_dir=tmp_path / "b", metrics={"economy": False, "head_roles": 1}, strict=True
    )
    with first:
        for s in range(2):
            first.step(s)
        state = first.state_dict()
    resumed = dynmon.Monitor(
        model,
        run_dir=tmp_path / "c",
        metrics={"economy": False, "head_roles": 1},
        strict=True,
        seed=123,  # another generator: only the saved probe gives the same numbers
    )
    resumed.load_state_dict(state)
    with resumed:
        resumed.step(2)
    a = _rows(tmp_path / "a")[2]
    c = _rows(tmp_path / "c")[0]
    assert c["step"] == 2 and a == c


# -- non-interference ----------------------------------------------------------------------------
def _train(model, monitor_dir, steps: int = 5, every: int = 1) -> tuple[dict, torch.Tensor]:
    torch.manual_seed(1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(2)
    mon = None
    if monitor_dir is not None:
        mon = dynmon.Monitor(
            model,
            run_dir=monitor_dir,
            metrics={"economy": None, "head_roles": dynmon.every(every)},
            strict=True,
        )
    for s in range(steps):
        tokens = torch.randint(0, 40, (4, 16), generator=g)
        logits = model(tokens)
        logits = getattr(logits, "logits", logits)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, 40), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if mon is not None:
            mon.step(s, loss=loss.detach())
    if mon is not None:
        mon.close()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, torch.get_rng_state()


@pytest.mark.parametrize("make", [lambda: _gpt2(attn_pdrop=0.2), lambda: TinyLM(vocab=40)])
def test_training_is_bitwise_identical_and_modes_are_restored(tmp_path, make):
    torch.manual_seed(0)
    plain = make().train()
    torch.manual_seed(0)
    watched = make().train()
    impl = getattr(getattr(watched, "config", None), "_attn_implementation", None)
    want, rng_want = _train(plain, None)
    got, rng_got = _train(watched, tmp_path)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert torch.equal(rng_want, rng_got)
    assert all(m.training for m in watched.modules())
    assert getattr(getattr(watched, "config", None), "_attn_implementation", None) == impl
    assert any("induction_score" in k for k in _rows(tmp_path)[0])


def test_a_model_without_a_pattern_source_switches_head_roles_off_not_training(tmp_path):
    from test_patterns import RopeAttention

    model = nn.Sequential(nn.Embedding(40, 32), RopeAttention(), nn.Linear(32, 40))
    mon = dynmon.Monitor(
        model, run_dir=tmp_path, metrics={"economy": None, "head_roles": dynmon.every(1)}
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with mon:
            mon.step(0, loss=1.0)
            mon.step(1, loss=0.9)
    assert "head_roles" in mon.disabled and "roles_patterns" in mon.disabled["head_roles"]
    assert any("head_roles" in str(w.message) for w in caught)
    rows = _rows(tmp_path)
    assert any(k.startswith("dynmon/erank/") for k in rows[0]) and rows[1]["loss"] == 0.9


def test_user_patterns_fn_is_used_for_models_dynmon_cannot_read():
    probe = R.make_probe(40, 16, 2, torch.Generator().manual_seed(0))
    model = nn.Sequential(nn.Embedding(40, 32), nn.Linear(32, 40))
    seen = []

    def patterns_fn(m, tokens):
        seen.append(tokens.shape)
        B, T = tokens.shape
        A = torch.ones(T, T).tril()
        return m(tokens), (A / A.sum(-1, keepdim=True)).expand(1, B, 2, T, T)

    ctx = dynmon.LookContext(
        step=0,
        model=model,
        heads=[],
        options={"roles_probe": probe, "roles_patterns": patterns_fn, "roles_events": False},
    )
    with torch.no_grad():
        out = HEAD_ROLES.compute(ctx)
    assert seen == [(2, 16)]
    chance = R.uniform_chance(probe)["induction_score"]
    assert float(out.scalars["dynmon/induction_score/L0.H1.attn"]) == pytest.approx(chance)
