"""The Lightning callback in real ``Trainer.fit`` runs on CPU with a TransformerLens model.

The resume test is checked against a second method: an uninterrupted fit of the same length must
give the same run folder, step for step, as a fit stopped at step 6 and resumed from its checkpoint.
"""

from __future__ import annotations

import csv
import math

import pytest
import torch
from conftest import tiny_tl
from torch import nn

import dynmon

pl = pytest.importorskip("lightning.pytorch")
pytest.importorskip("transformer_lens")
from dynmon.integrations.lightning import DynmonCallback  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger  # noqa: E402

VOCAB, CTX, BATCH = 16, 8, 8


def tl_model() -> nn.Module:
    """A 2-layer attention-only TransformerLens model, built natively (no download)."""
    return tiny_tl(n_ctx=CTX, d_vocab=VOCAB)


class LitLM(pl.LightningModule):
    """Next-token prediction with the TransformerLens model as ``self.model``."""

    def __init__(self) -> None:
        super().__init__()
        self.model = tl_model()

    def training_step(self, batch, batch_idx):
        (tokens,) = batch
        logits = self.model(tokens)  # [B, T, V]
        loss = nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, VOCAB), tokens[:, 1:].reshape(-1)
        )  # [B·(T−1), V] against [B·(T−1)]
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def loader() -> torch.utils.data.DataLoader:
    """One fixed batch per epoch, so a resumed fit sees exactly the batches a straight one does."""
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (BATCH, CTX), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(tokens), batch_size=BATCH)


def trainer(root, max_steps: int, callbacks: list, logger) -> pl.Trainer:
    return pl.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(root),
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )


def callback(**kw) -> DynmonCallback:
    return DynmonCallback(
        module="model",
        schedule=dynmon.every(2),
        metrics=["erank", "stable_rank", "subspace_dist", "norms"],
        strict=True,
        **kw,
    )


def by_step(run) -> dict[int, dict]:
    """Run-folder rows merged per step (a centred measure may arrive in a later line)."""
    rows: dict[int, dict] = {}
    for row in run.metrics:
        rows.setdefault(row["step"], {}).update(row)
    return rows


def assert_same_value(a, b) -> None:
    if isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b)
    else:
        assert a == pytest.approx(b, rel=1e-5, abs=1e-7)


def assert_same_state(a, b) -> None:
    """Two monitor states agree (tensors elementwise, containers recursively)."""
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, equal_nan=True)
        else:
            assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_state(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_state(x, y)
    elif isinstance(a, float):
        assert_same_value(a, b)
    else:
        assert a == b


def test_fit_logs_to_loggers_and_a_resumed_fit_continues(tmp_path):
    torch.manual_seed(0)
    # a straight 12-step fit, logging to CSV and TensorBoard beside the run folder
    straight = callback()
    loggers = [CSVLogger(tmp_path / "a"), TensorBoardLogger(tmp_path / "a")]
    trainer(tmp_path / "a", 12, [straight], loggers).fit(LitLM(), loader())
    run_a = dynmon.load_run(straight.run_dir)
    assert straight.run_dir == tmp_path / "a" / "lightning_logs" / "version_0" / "dynmon"

    # the same fit stopped at step 6 (checkpoint at its last epoch end), then resumed to 12
    first = callback()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_epochs=3, save_top_k=-1)
    trainer(tmp_path / "b", 6, [first, ckpt], CSVLogger(tmp_path / "b")).fit(LitLM(), loader())
    (path,) = (tmp_path / "ckpt").glob("*step=6.ckpt")
    saved = torch.load(path, weights_only=False)["callbacks"]["DynmonCallback"]
    assert saved["monitor"]["looks"] == 3 and saved["monitor"]["last_step"] == 6  # steps 2, 4, 6
    resumed = callback()  # no run_dir: the checkpoint says where the run folder is
    trainer(tmp_path / "b", 12, [resumed], CSVLogger(tmp_path / "b")).fit(
        LitLM(), loader(), ckpt_path=path
    )
    assert resumed.run_dir == first.run_dir  # version_0's folder, not the new version_1
    run_b = dynmon.load_run(first.run_dir)

    # every step 1..12 logged once, looks at the schedule's steps, each value as in the straight fit
    steps_b = [r["step"] for r in run_b.metrics if "loss" in r]
    assert steps_b == list(range(1, 13))
    a, b = by_step(run_a), by_step(run_b)
    assert a.keys() == b.keys()
    looks = [s for s in sorted(b) if "dynmon/erank/QK" in b[s]]
    assert looks == [2, 4, 6, 8, 10, 12]
    assert "dynmon/subspace_dist/QK" in b[8]  # the first look after resuming had its snapshot
    for step in a:
        assert a[step].keys() == b[step].keys(), step
        for key in a[step]:
            assert_same_value(a[step][key], b[step][key])
    assert [e for e in run_b.events if e["step"] > 6] == [e for e in run_a.events if e["step"] > 6]
    assert_same_state(straight.monitor.state_dict(), resumed.monitor.state_dict())
    loss_a = [r["loss"] for r in run_a.metrics if "loss" in r]
    assert loss_a[-1] < loss_a[0]  # it trained

    # the trainer's loggers got dynmon's keys at dynmon's steps, beside the module's own
    with open(tmp_path / "a" / "lightning_logs" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    erank = {int(r["step"]): float(r["dynmon/erank/QK"]) for r in rows if r["dynmon/erank/QK"]}
    assert erank.keys() == {2, 4, 6, 8, 10, 12}
    for step, value in erank.items():
        assert value == pytest.approx(a[step]["dynmon/erank/QK"], rel=1e-6)
    assert "train_loss" in rows[0] and "loss" not in rows[0]  # the module logs its own loss
    assert not any(k.startswith("dynmon/erank/L0.H") for k in rows[0])  # heads: heatmaps only

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(loggers[1].log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tb = {e.step: e.value for e in acc.Scalars("dynmon/subspace_dist/OV")}
    assert tb.keys() == {4, 6, 8, 10, 12}  # no previous look to compare with at step 2
    for step, value in tb.items():
        assert value == pytest.approx(a[step]["dynmon/subspace_dist/OV"], rel=1e-5, abs=1e-7)
    assert [im.step for im in acc.Images("dynmon/heatmap/erank/QK")] == [2, 4, 6, 8, 10, 12]


def test_gradient_accumulation_steps_once_per_update(tmp_path):
    cb = DynmonCallback(tmp_path / "run", schedule=dynmon.every(1), metrics=["norms"])
    tokens = torch.randint(0, VOCAB, (4 * BATCH, CTX), generator=torch.Generator().manual_seed(2))
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(tokens), batch_size=BATCH)
    fit = pl.Trainer(
        max_steps=3, accelerator="cpu", logger=False, callbacks=[cb], accumulate_grad_batches=2,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    fit.fit(LitLM(), data)
    run = dynmon.load_run(tmp_path / "run")
    assert [r["step"] for r in run.metrics] == [1, 2, 3]  # 6 micro-batches, 3 updates
    assert run.summary["dynmon"]["looks"] == 3


def test_wandb_logger_run_is_reused(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    from dynmon.sinks.wandb import WandbSink

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="dynmon-test")
    cb = callback(run_dir=tmp_path / "run")
    try:
        trainer(tmp_path, 4, [cb], logger).fit(LitLM(), loader())
        (sink,) = [s for s in cb.monitor.sinks if isinstance(s, WandbSink)]
        assert sink.run is logger.experiment and not sink._owns_run
        summary = dict(logger.experiment.summary)
        folder = dynmon.load_run(tmp_path / "run")
        run = by_step(folder)
        assert summary["dynmon/step"] == 4
        assert summary["dynmon/erank/QK"] == pytest.approx(run[4]["dynmon/erank/QK"], rel=1e-9)
        assert "train_loss" in summary and "loss" not in summary
    finally:
        wandb.finish()
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")  # one run: the logger's
    images = list((run_dir / "files" / "media" / "images").rglob("*.png"))
    assert len(images) == sum(len(row) - 1 for row in folder.arrays) > 0  # one per array per look


def test_bad_arguments_say_what_to_do(tmp_path):
    with pytest.raises(TypeError, match="module='<dotted name>'"):
        DynmonCallback(model=nn.Linear(2, 2))
    cb = DynmonCallback(tmp_path / "run", module="encoder")
    fit = pl.Trainer(
        max_steps=1, accelerator="cpu", logger=False, callbacks=[cb],
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"no such submodule.*children are \['model'\]"):
        fit.fit(LitLM(), loader())
