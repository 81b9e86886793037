"""The Hugging Face Trainer callback in real ``Trainer.train()`` runs on CPU with a tiny GPT-2.

Checked against second methods: the loss the callback logs against the Trainer's own logged loss,
GPT-2's per-head effective ranks against a dense SVD of each head's QK built from ``c_attn``, and
a resumed run against an uninterrupted one.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import dynmon

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from dynmon.integrations.hf import STATE_FILE, DynmonCallback  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments  # noqa: E402

VOCAB, CTX, N_HEAD, D = 64, 16, 2, 32


def gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=2, n_head=N_HEAD, n_embd=D, vocab_size=VOCAB, n_positions=32,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return GPT2LMHeadModel(cfg)


class Tokens(torch.utils.data.Dataset):
    """Random token rows as ``{"input_ids", "labels"}`` (GPT-2 shifts the labels itself)."""

    def __init__(self, n: int = 32, seed: int = 1) -> None:
        g = torch.Generator().manual_seed(seed)
        self.rows = torch.randint(0, VOCAB, (n, CTX), generator=g)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


def train(out, max_steps: int, cb: DynmonCallback, report_to=(), resume=None, **kw) -> Trainer:
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="steps",
        save_steps=3,
        report_to=list(report_to),
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
        **kw,
    )
    trainer = Trainer(model=gpt2(), args=args, train_dataset=Tokens(), callbacks=[cb])
    trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
    return trainer


def callback(**kw) -> DynmonCallback:
    return DynmonCallback(
        schedule=dynmon.every(2), metrics=["erank", "subspace_dist", "norms"], strict=True, **kw
    )


def hf_losses(trainer: Trainer) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in trainer.state.log_history if "loss" in r}


def our_losses(run) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in run.metrics if "loss" in r}


def dense_erank(matrix: torch.Tensor) -> float:
    """Roy–Vetterli effective rank from the full SVD of a dense matrix (docs/metrics.md#erank)."""
    s = torch.linalg.svdvals(matrix.double())
    p = s / s.sum()
    p = p[p > 0]
    return math.exp(-(p * p.log()).sum().item())


def test_train_logs_loss_and_gpt2_heads(tmp_path):
    cb = callback()
    trainer = train(tmp_path / "out", 6, cb)
    run = dynmon.load_run(tmp_path / "out" / "dynmon")
    ours, theirs = our_losses(run), hf_losses(trainer)
    assert list(ours) == [1, 2, 3, 4, 5, 6] and ours.keys() == theirs.keys()
    for step in ours:
        assert ours[step] == pytest.approx(theirs[step], rel=1e-6)
    assert ours[6] < ours[1]

    # GPT-2's heads, from the last look (step 6, the final weights) against a dense SVD
    last = [r for r in run.metrics if r["step"] == 6 and "dynmon/erank/QK" in r][0]
    dh = D // N_HEAD
    for layer, block in enumerate(trainer.model.transformer.h):
        wq, wk, _ = block.attn.c_attn.weight.detach().split(D, dim=1)  # Conv1D: [in, out]
        for head in range(N_HEAD):
            cols = slice(head * dh, (head + 1) * dh)
            qk = wq[:, cols] @ wk[:, cols].T  # [D, D], rank <= dh
            got = last[f"dynmon/erank/L{layer}.H{head}.QK"]
            assert got == pytest.approx(dense_erank(qk), rel=1e-4)
    assert run.config["dynmon"]["model_class"] == "GPT2LMHeadModel"
    assert [h["n_heads"] for h in run.config["dynmon"]["attention_layers"]] == [N_HEAD, N_HEAD]
    assert (tmp_path / "out" / "checkpoint-3" / STATE_FILE).is_file()
    assert run.summary["dynmon"]["looks"] == 3


def test_gradient_accumulation_loss_matches_the_trainers(tmp_path):
    trainer = train(tmp_path / "out", 3, callback(), gradient_accumulation_steps=2)
    ours = our_losses(dynmon.load_run(tmp_path / "out" / "dynmon"))
    theirs = hf_losses(trainer)
    assert list(ours) == [1, 2, 3]
    for step in ours:
        assert ours[step] == pytest.approx(theirs[step], rel=1e-6)


def test_resumed_run_continues_as_an_uninterrupted_one(tmp_path):
    straight = callback()
    train(tmp_path / "a", 6, straight)
    first = callback()
    train(tmp_path / "b", 3, first)
    resumed = callback()  # no run_dir: the checkpoint says where the run folder is
    train(tmp_path / "b", 6, resumed, resume=tmp_path / "b" / "checkpoint-3")
    assert resumed.run_dir == first.run_dir
    a = dynmon.load_run(tmp_path / "a" / "dynmon")
    b = dynmon.load_run(tmp_path / "b" / "dynmon")
    assert [r["step"] for r in b.metrics if "loss" in r] == [1, 2, 3, 4, 5, 6]
    rows_a = {r["step"]: r for r in a.metrics}
    rows_b = {r["step"]: r for r in b.metrics}
    assert [s for s in rows_b if "dynmon/erank/QK" in rows_b[s]] == [2, 4, 6]
    assert "dynmon/subspace_dist/QK" in rows_b[4]  # the first look after resuming compared
    for step, row in rows_a.items():
        assert row.keys() == rows_b[step].keys()
        for key, value in row.items():
            assert rows_b[step][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (step, key)
    sa, sb = straight.monitor.state_dict(), resumed.monitor.state_dict()
    assert sa["looks"] == sb["looks"] == 3 and sa["seen_keys"] == sb["seen_keys"]
    assert sa["detectors"] == sb["detectors"]
    for name, snap in sa["snapshots"].items():
        torch.testing.assert_close(snap, sb["snapshots"][name], rtol=1e-5, atol=1e-6)


def test_reports_into_the_trainers_wandb_run(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from dynmon.sinks.wandb import WandbSink

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    (tmp_path / "wb").mkdir()
    cb = callback()
    try:
        train(tmp_path / "out", 4, cb, report_to=["wandb"])
        (sink,) = [s for s in cb.monitor.sinks if isinstance(s, WandbSink)]
        assert sink.run is wandb.run and not sink._owns_run  # the Trainer's WandbCallback's run
        summary = dict(wandb.run.summary)
        assert summary["dynmon/step"] == 4 and "train/loss" in summary
        rows = {r["step"]: r for r in dynmon.load_run(tmp_path / "out" / "dynmon").metrics}
        assert summary["dynmon/erank/L1.QK"] == pytest.approx(rows[4]["dynmon/erank/L1.QK"])
        # wandb reads WANDB_DIR once per process, so find the run's folder from the run itself
        files = Path(wandb.run.dir)
    finally:
        wandb.finish()
    assert list((files / "media" / "images").rglob("*.png"))  # per-head heatmaps


def test_bad_input_says_what_to_do(tmp_path):
    with pytest.raises(TypeError, match="pass no model="):
        DynmonCallback(model=gpt2())
    train(tmp_path / "out", 3, callback())
    (tmp_path / "out" / "checkpoint-3" / STATE_FILE).unlink()
    with pytest.warns(RuntimeWarning, match="starts fresh histories"):
        train(tmp_path / "out", 4, callback(), resume=tmp_path / "out" / "checkpoint-3")
