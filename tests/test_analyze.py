"""dynmon analyze: checkpoints of a real short training, checked against dense computations."""

from __future__ import annotations

import io
import json
import math
import textwrap

import pytest
import torch
from scipy.linalg import subspace_angles

from dynmon.analyze import analyze
from dynmon.checkpoints import (
    CheckpointError,
    find_checkpoints,
    load_into,
    load_state_dict,
    save_tl_config,
)
from dynmon.cli import main
from dynmon.runfolder import load_run

F64 = torch.float64


# -- independent dense references ----------------------------------------------------------------
def dense_erank(M: torch.Tensor, r: int) -> float:
    s = torch.linalg.svdvals(M)[:r]
    p = s / s.sum()
    return float(torch.exp(-(p * p.log()).sum()))


def dense_seed_dist(M_t: torch.Tensor, M_f: torch.Tensor) -> float:
    """‖M_f (I − M_t⁺ M_t)‖_F / ‖M_f‖_F with a dense pseudo-inverse."""
    P = torch.linalg.pinv(M_t, rtol=1e-8) @ M_t
    eye = torch.eye(M_t.shape[1], dtype=M_t.dtype)
    return float(torch.linalg.norm(M_f @ (eye - P)) / torch.linalg.norm(M_f))


def dense_subspace_dist(M: torch.Tensor, M0: torch.Tensor, k: int) -> float:
    """Mean of left and right √(mean sin²θ) of the top-k singular subspaces (scipy angles)."""
    U, _, Vh = torch.linalg.svd(M)
    U0, _, Vh0 = torch.linalg.svd(M0)
    out = 0.0
    for a, b in ((U[:, :k], U0[:, :k]), (Vh[:k].T, Vh0[:k].T)):
        theta = subspace_angles(a.numpy(), b.numpy())
        out += 0.5 * math.sqrt(float((torch.from_numpy(theta).sin() ** 2).mean()))
    return out


def rows_by_step(run_dir) -> dict[int, dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    out: dict[int, dict] = {}
    for r in rows:
        out.setdefault(r["step"], {}).update(r)
    return out


# -- a TransformerLens native model --------------------------------------------------------------
def tl_config(seed: int = 0):
    from transformer_lens.config import TransformerBridgeConfig

    return TransformerBridgeConfig(
        d_model=24,
        d_head=6,
        n_heads=4,
        n_layers=2,
        n_ctx=12,
        d_vocab=16,
        attn_only=True,
        normalization_type=None,
        seed=seed,
        device="cpu",
    )


def boot(cfg):
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_native(cfg)


def train_and_save(model, ckpt_dir, steps, save_every, name, vocab):
    """A short real training (next-token loss on random tokens), saving state dicts."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    g = torch.Generator().manual_seed(0)
    for step in range(steps + 1):
        if step % save_every == 0:
            path = ckpt_dir / name(step)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), path)
        x = torch.randint(0, vocab, (8, 10), generator=g)  # [B, T]
        logits = model(x)  # [B, T, V]
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, vocab), x[:, 1:].reshape(-1)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.fixture(scope="module")
def tl_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tl")
    ckpt, out = tmp / "ckpt", tmp / "run"
    cfg = tl_config()
    train_and_save(boot(cfg), ckpt, 30, 10, lambda s: f"step_{s:06d}.pt", cfg.d_vocab)
    save_tl_config(cfg, ckpt)
    stream = io.StringIO()
    analyze(ckpt, out, strict=True, stream=stream)
    return ckpt, out, stream.getvalue()


def tl_circuits(ckpt_file) -> dict[str, torch.Tensor]:
    """Dense QK, OV [L, H, D, D] from TransformerLens's own stacked weights of a checkpoint."""
    m = boot(tl_config(seed=1))  # other init: everything must come from the file
    m.load_state_dict(torch.load(ckpt_file, weights_only=True))
    W_Q, W_K, W_V, W_O = (w.detach().to(F64) for w in (m.W_Q, m.W_K, m.W_V, m.W_O))
    return {"QK": W_Q @ W_K.mT, "OV": W_V @ W_O}


def test_tl_checkpoints_match_dense_spectra_and_distances(tl_run):
    ckpt, out, log = tl_run
    rows = rows_by_step(out)
    assert sorted(rows) == [0, 10, 20, 30]
    dense = {s: tl_circuits(ckpt / f"step_{s:06d}.pt") for s in rows}
    final = dense[30]
    for step, circ in dense.items():
        row = rows[step]
        all_final = []
        for c, M in circ.items():
            L, H = M.shape[:2]
            for layer in range(L):
                for h in range(H):
                    tgt = f"L{layer}.H{h}.{c}"
                    assert row[f"dynmon/erank/{tgt}"] == pytest.approx(
                        dense_erank(M[layer, h], 6), rel=1e-4
                    )
                    d = dense_seed_dist(M[layer, h], final[c][layer, h])
                    all_final.append(d)
                    assert row[f"dynmon/subspace_dist_final/{tgt}"] == pytest.approx(d, abs=2e-4)
                    if step > 0:  # against the previous checkpoint, with the k recorded
                        k = int(row[f"dynmon/subspace_k/{c}"])
                        prev = dense[step - 10][c][layer, h]
                        ref = dense_subspace_dist(M[layer, h], prev, k)
                        assert row[f"dynmon/subspace_dist/{tgt}"] == pytest.approx(ref, abs=2e-4)
        mean = sum(all_final) / len(all_final)
        assert row["dynmon/subspace_dist_final"] == pytest.approx(mean, abs=2e-4)
    assert rows[30]["dynmon/subspace_dist_final"] < 1e-4  # the final matrix is its own reference
    assert rows[0]["dynmon/subspace_dist_final"] > 0.05  # and training moved the heads
    assert "analyze: step 30/30 (100%)" in log


def test_tl_run_folder_is_drawn_by_dynmon_report(tl_run, capsys):
    _, out, _ = tl_run
    run = load_run(out)
    assert run.config["run"]["steps"] == [0, 10, 20, 30]
    assert run.config["run"]["model"].startswith("transformer_lens")
    assert main(["report", str(out), "--png"]) == 0
    assert (out / "index.html").is_file()
    assert (out / "plots" / "erank.png").is_file() and (out / "plots" / "subspace.png").is_file()


# -- a plain nn.Module through --model file.py:factory, via the CLI -----------------------------
MODEL_SRC = textwrap.dedent(
    """
    import torch
    from torch import nn

    class MHALM(nn.Module):
        def __init__(self, vocab=16, d=16, heads=2):
            super().__init__()
            self.embed = nn.Embedding(vocab, d)
            self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
            self.unembed = nn.Linear(d, vocab)

        def forward(self, x):
            h = self.embed(x)
            T = x.shape[1]
            mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
            a, _ = self.attn(h, h, h, attn_mask=mask, need_weights=False)
            return self.unembed(h + a)

    def build():
        torch.manual_seed(123)
        return MHALM()
    """
)


def mha_circuits(state: dict, d: int = 16, heads: int = 2) -> dict[str, list[torch.Tensor]]:
    """Dense per-head QK = Wq_hᵀ Wk_h and OV = Wv_hᵀ Wo_hᵀ from the module's own equations."""
    Wq, Wk, Wv = state["attn.in_proj_weight"].to(F64).split(d, 0)  # [out, in] each
    Wo = state["attn.out_proj.weight"].to(F64)  # [D, D]
    dh = d // heads
    blk = [slice(h * dh, (h + 1) * dh) for h in range(heads)]
    return {
        "QK": [Wq[b].T @ Wk[b] for b in blk],  # scores = x Wq_hᵀ (x Wk_hᵀ)ᵀ
        "OV": [Wv[b].T @ Wo[:, b].T for b in blk],  # out = x Wv_hᵀ Wo[:, h]ᵀ
    }


def test_plain_module_with_factory_via_cli(tmp_path, capsys):
    src = tmp_path / "mymodel.py"
    src.write_text(MODEL_SRC)
    ns: dict = {}
    exec(compile(MODEL_SRC, str(src), "exec"), ns)
    model = ns["build"]()
    ckpt, out = tmp_path / "ckpt", tmp_path / "run"
    train_and_save(model, ckpt, 20, 10, lambda s: f"checkpoint-{s}/model.pt", 16)
    for s in (0, 10, 20):  # trainer state beside the weights is skipped
        torch.save({"state": {0: torch.zeros(3)}}, ckpt / f"checkpoint-{s}" / "optimizer.pt")
    rc = main(["analyze", str(ckpt), "--out", str(out), "--model", f"{src}:build", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    rows = rows_by_step(out)
    assert sorted(rows) == [0, 10, 20]
    dense = {s: mha_circuits(torch.load(ckpt / f"checkpoint-{s}/model.pt")) for s in rows}
    for step in (0, 10):
        for c in ("QK", "OV"):
            for h in range(2):
                M, M_f = dense[step][c][h], dense[20][c][h]
                row = rows[step]
                assert row[f"dynmon/erank/L0.H{h}.{c}"] == pytest.approx(
                    dense_erank(M, 8), rel=1e-4
                )
                assert row[f"dynmon/subspace_dist_final/L0.H{h}.{c}"] == pytest.approx(
                    dense_seed_dist(M, M_f), abs=2e-4
                )
    assert (out / "index.html").is_file()  # the CLI draws the report


# -- refusals and the discovery rule -------------------------------------------------------------
class Custom:
    """Not a tensor: torch.load(weights_only=True) must refuse to unpickle it."""

    def __init__(self) -> None:
        self.x = 1


def test_pickle_only_checkpoint_is_refused(tmp_path, capsys):
    cfg = tl_config()
    save_tl_config(cfg, tmp_path)
    path = tmp_path / "step_5.pt"
    torch.save({"state_dict": boot(cfg).state_dict(), "extra": Custom()}, path)
    with pytest.raises(CheckpointError, match=r"step_5\.pt cannot be read with torch\.load"):
        load_state_dict(path)
    rc = main(["analyze", str(tmp_path), "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "step_5.pt" in err and "weights_only=True" in err and "state_dict()" in err


def test_discovery_sorts_by_step_skips_state_and_reports_clashes(tmp_path):
    t = torch.zeros(2)
    for name in ("step_100.pt", "step_9.pt", "step_10.pt", "optimizer_10.pt", "notes.txt"):
        torch.save({"w": t}, tmp_path / name)
    found = find_checkpoints(tmp_path)
    assert [(c.step, c.path.name) for c in found] == [
        (9, "step_9.pt"),
        (10, "step_10.pt"),
        (100, "step_100.pt"),
    ]
    torch.save({"w": t}, tmp_path / "epoch=1-step=10.ckpt")
    with pytest.raises(CheckpointError, match="several weight files for step 10"):
        find_checkpoints(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoints"):
        find_checkpoints(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="is not a directory"):
        find_checkpoints(tmp_path / "step_9.pt")


def test_missing_model_and_wrapped_prefixed_state(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "step_1.pt")
    with pytest.raises(CheckpointError, match="no model to load the checkpoints into"):
        analyze(tmp_path, tmp_path / "run", progress=False)
    # a Lightning-style checkpoint: the state dict under "state_dict", keys prefixed "model."
    net = torch.nn.Sequential(torch.nn.Linear(3, 2))
    src = torch.nn.Sequential(torch.nn.Linear(3, 2))
    wrapped = {"state_dict": {f"model.{k}": v for k, v in src.state_dict().items()}, "epoch": 1}
    torch.save(wrapped, tmp_path / "lit.ckpt")
    load_into(net, load_state_dict(tmp_path / "lit.ckpt"))
    assert torch.equal(net[0].weight, src[0].weight)
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_into(torch.nn.Linear(4, 2), src.state_dict())


def test_hf_trainer_style_checkpoints_use_their_own_config(tmp_path):
    """checkpoint-N/model.safetensors + config.json (tied lm_head), as a HF Trainer saves them."""
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=20, n_positions=16)
    model = transformers.GPT2LMHeadModel(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(11):
        if step % 5 == 0:
            model.save_pretrained(tmp_path / f"checkpoint-{step}")
            torch.save({"state": {}}, tmp_path / f"checkpoint-{step}" / "optimizer.pt")
        x = torch.randint(0, 20, (4, 8))
        loss = model(x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    analyze(tmp_path, tmp_path / "run", strict=True, progress=False)
    rows = rows_by_step(tmp_path / "run")
    assert sorted(rows) == [0, 5, 10]
    for step in rows:
        W = load_file(tmp_path / f"checkpoint-{step}" / "model.safetensors")
        Wq, Wk, _ = W["transformer.h.0.attn.c_attn.weight"].to(F64).split(16, 1)  # Conv1D [in, out]
        for h in range(2):
            b = slice(8 * h, 8 * (h + 1))
            QK = Wq[:, b] @ Wk[:, b].T  # scores = (x Wq_h)(x Wk_h)ᵀ
            assert rows[step][f"dynmon/erank/L0.H{h}.QK"] == pytest.approx(
                dense_erank(QK, 8), rel=1e-4
            )
