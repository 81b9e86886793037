"""The training loop: AdamW on freshly drawn sequences with dynmon watching.

Step s is the model after s updates (step 0 is the initial model); the training loss logged at
step s is that of the batch update s was computed on. The Monitor, after every update:

- every ``log_every`` steps, the task metrics on the fixed probe set (``scores.task_metric``:
  ``probe/loss_repeated``, ``probe/icl_score``, ``probe/induction_score``... and per-head
  induction, previous-token and copying scores);
- every ``look_every`` steps, dynmon's economy metrics (erank, stable rank, subspace distance
  to the previous look and to the first look, norms, gradient norm) and the marginal erank;
- every ``sharpness_every`` steps, the top Hessian eigenvalue of the probe loss.

Online events: dynmon's ``PlateauCliffDetector`` on the repeated-token loss (its largest cliff is
the emergence) and on the training loss, and an ``OnsetDetector`` on the best induction score.
The per-head weights are kept at every look (``L·H·4·D·dh`` floats each), so that at the end the
seed paper's offline distance of every head's QK and OV to its final matrix can be computed.
Definitions of the emergence and stabilisation steps are in ``timing.py``; headline figures go
to ``summary.json`` and the figure to ``plots/induction.png``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynmon.keys import key
from dynmon.runfolder import write_hindsight

from ..threads import pick_threads, torch_threads
from . import timing
from .config import InductionConfig
from .data import make_batch
from .model import build_model, next_token_loss, trainable
from .scores import probe_scores, task_metric

PROBE_SEED = 2**31 - 1  # one fixed probe set for every seed, so seeds are measured alike
REPEATED = "probe/loss_repeated"
INDUCTION = "probe/induction_score"


def detectors(cfg: InductionConfig) -> list[Any]:
    """The online detectors, configured for how often each key is logged."""
    from dynmon.events import OnsetConfig, OnsetDetector, PlateauCliffDetector, PlateauConfig

    return [
        # probe losses every log_every steps: the induction cliff takes ~10-30 logs
        PlateauCliffDetector(REPEATED, PlateauConfig(window=8, min_drop=0.25)),
        OnsetDetector(INDUCTION, OnsetConfig(window=6, min_rise=0.2)),
        PlateauCliffDetector("loss", PlateauConfig(window=50)),  # every step, noisier
    ]


Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # circuit -> (A, B), M = A Bᵀ


def head_weights(model: torch.nn.Module) -> Factors:
    """Every head's QK and OV factors ``[L, H, D, dh]`` (``head_factors``), copied to the CPU."""
    import dynmon
    from dynmon.metrics.table import head_factors

    return {
        c: (A.detach().to("cpu", copy=True), B.detach().to("cpu", copy=True))
        for c, (A, B) in head_factors(dynmon.heads(model)).items()
    }


def distance_to_final(history: dict[int, Factors]) -> dict[str, Any]:
    """The seed paper's offline measure: every head's QK and OV against its final matrix.

    ``‖M_final (I − M_t⁺ M_t)‖_F / ‖M_final‖_F`` per head (``dynmon.analyze.distances_to_final``,
    as ``dynmon analyze`` logs it), for every kept step at once. Returns the steps and ``QK``,
    ``OV`` as ``[N, L, H]`` arrays.
    """
    from dynmon.analyze import distances_to_final

    steps = sorted(history)
    stacked = {  # circuit -> (A, B), each [N, L, H, D, dh]
        c: tuple(torch.stack([history[s][c][i] for s in steps]) for i in (0, 1))
        for c in ("QK", "OV")
    }
    final = {c: (A[-1:], B[-1:]) for c, (A, B) in stacked.items()}  # [1, L, H, D, dh]
    d = distances_to_final(stacked, final)  # circuit -> [N, L, H]
    return {"steps": steps, **{c: v.double().numpy() for c, v in d.items()}}


def run(
    config: InductionConfig, out: Path | str, *, wandb: bool = False, group: str | None = None
) -> dict:
    """Train with the Monitor attached; write the run folder and its figure; return the summary.

    The loop runs with ``config.threads`` CPU threads, or the count ``pick_threads`` picks from
    the model's size when it is 0 (one for the presets' small models on CPU).
    """
    model = build_model(config)
    n_params = sum(p.numel() for p in trainable(model))
    with torch_threads(pick_threads(config.threads, n_params, config.device)):
        return _train(config, Path(out), wandb, model, group)


def _train(
    cfg: InductionConfig, out: Path, wandb: bool, model: torch.nn.Module, group: str | None = None
) -> dict:
    """The loop of :func:`run` (with its thread count set)."""
    import dynmon

    device = torch.device(cfg.device)
    opt = torch.optim.AdamW(
        trainable(model), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2)
    )
    g = torch.Generator().manual_seed(cfg.seed)  # the training stream
    probe = make_batch(cfg, torch.Generator().manual_seed(PROBE_SEED), cfg.probe_size)
    probe = probe.to(device)

    metrics: dict[Any, Any] = {
        "economy": None,  # every look_every steps (the Monitor's schedule)
        "marginal_erank": None,
        task_metric(probe): dynmon.every(cfg.log_every),
    }
    if cfg.sharpness_every:
        metrics["sharpness"] = dynmon.every(cfg.sharpness_every)
    history: dict[int, Factors] = {}

    mon = dynmon.Monitor(
        model,
        run_dir=out,
        schedule=dynmon.every(cfg.look_every),  # regular looks: distances per look_every steps
        metrics=metrics,
        sinks=["local", dynmon.make_sink("wandb", out, group=group)] if wandb else ["local"],
        loss_fn=next_token_loss,
        probe_batch=probe.tokens[: cfg.sharpness_batch],
        optimizer=opt,
        detectors=detectors(cfg),
        config=cfg,
    )
    from dynmon.progress import Progress, latest_event

    start = time.perf_counter()
    seconds_in_monitor = 0.0  # inside Monitor.step, looks included
    with mon, Progress(cfg.steps, f"induction {cfg.n_layers}-layer") as bar:
        mon.step(0)
        history[0] = head_weights(model)
        for step in range(1, cfg.steps + 1):
            tokens = make_batch(cfg, g).tokens.to(device)  # [B, T]
            loss = next_token_loss(model, tokens)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            t_mon = time.perf_counter()
            mon.step(step, loss=loss.detach())
            seconds_in_monitor += time.perf_counter() - t_mon
            bar.update(step, loss=loss.detach().item(), event=latest_event(mon.last_event))
            if step % cfg.look_every == 0 or step == cfg.steps:
                history[step] = head_weights(model)
        elapsed = time.perf_counter() - start
        summary = summarize(cfg, model, probe, mon, history)
        summary.update(
            steps_run=cfg.steps,
            seconds=round(elapsed, 2),
            steps_per_s=round(cfg.steps / elapsed, 2),
            seconds_in_monitor=round(seconds_in_monitor, 2),
            seconds_in_monitor_by_part={k: round(v, 3) for k, v in mon.seconds.items()},
            threads=torch.get_num_threads(),
        )
        for kind, step_key in (
            ("induction_emergence", "emergence_step"),
            ("subspace_stabilisation", "subspace_stabilisation_step"),
        ):
            if summary.get(step_key) is not None:
                mon.log_event(kind, summary[step_key], hindsight=True, message=_message(kind))
        mon.update_summary(summary)
    from .plots import draw

    draw(out, summary)
    return summary


def _message(kind: str) -> str:
    if kind == "induction_emergence":
        return "steepest point of the largest cliff in the repeated-token loss"
    return "head-averaged QK/OV subspace distance to the previous look settled"


def summarize(
    cfg: InductionConfig,
    model: torch.nn.Module,
    probe: Any,
    mon: Any,
    history: dict[int, Factors],
) -> dict[str, Any]:
    """Emergence, final task metrics, which heads formed, stabilisation steps, lead times."""
    import dynmon

    run_ = dynmon.load_run(mon.run_dir)
    events = mon.events
    cliff = timing.largest_cliff(events, REPEATED)
    onset = timing.first_event(events, "onset", INDUCTION)
    emergence = cliff["at"] if cliff else None
    rep_steps, rep = run_.series(REPEATED)

    with torch.no_grad():
        final = probe_scores(model, probe)
    ind = final["induction_heads"].double().cpu().numpy()  # [L, H]
    prev = final["prev_token_heads"].double().cpu().numpy()  # [L, H]
    copying = final["copying_heads"].double().cpu().numpy()  # [L, H]

    def heads_above(values: np.ndarray, report: np.ndarray | None = None) -> dict[str, float]:
        """``{"L1.H3": value}`` of the heads whose ``values`` pass the threshold."""
        report = values if report is None else report
        L, H = values.shape
        return {
            f"L{lay}.H{h}": round(float(report[lay, h]), 4)
            for lay in range(L)
            for h in range(H)
            if values[lay, h] > cfg.head_threshold
        }

    s: dict[str, Any] = {
        "emergence_step": emergence,
        "emergence_cliff": None
        if cliff is None
        else {k: cliff[k] for k in ("start", "end", "from", "to", "size") if k in cliff},
        "induction_onset_step": onset["at"] if onset else None,
        "steepest_drop_step": timing.steepest_drop(rep_steps, rep),
        "induction_score_max": round(float(ind.max()), 4),
        "induction_score_peak": float(np.nanmax(run_.series(INDUCTION)[1])),
        "prev_token_score_max": round(float(prev.max()), 4),
        "icl_score": float(final["icl_score"]),
        "loss_repeated": float(final["loss_repeated"]),
        "loss_first": float(final["loss_first"]),
        "induction_heads": heads_above(ind),
        "previous_token_heads": heads_above(prev),
        "copying_score_of_induction_heads": heads_above(ind, copying),
        "induction_head_formed": bool(ind.max() > cfg.head_threshold),
        "induction_scores": np.round(ind, 4).tolist(),
        "prev_token_scores": np.round(prev, 4).tolist(),
        "copying_scores": np.round(copying, 4).tolist(),
    }
    s.update(stabilisation(cfg, run_, history, emergence))
    return s


def stabilisation(
    cfg: InductionConfig, run_: Any, history: dict[int, Factors], emergence
) -> dict[str, Any]:
    """Subspace-stabilisation steps (online and final-reference) and their lead over emergence."""
    qs, qk = run_.series(key("subspace_dist", "QK"))
    os_, ov = run_.series(key("subspace_dist", "OV"))
    common = np.intersect1d(qs, os_)
    d = 0.5 * (qk[np.isin(qs, common)] + ov[np.isin(os_, common)])  # head- and circuit-averaged
    online = timing.settle(common, d, cfg.stable_frac)
    settled = online["step"]
    by_circuit = {
        "QK": timing.settle_step(qs, qk, cfg.stable_frac),
        "OV": timing.settle_step(os_, ov, cfg.stable_frac),
    }
    by_layer = {}
    for layer in range(cfg.n_layers):
        ls, lq = run_.series(key("subspace_dist", f"L{layer}.QK"))
        _, lo = run_.series(key("subspace_dist", f"L{layer}.OV"))
        by_layer[f"L{layer}"] = timing.settle_step(ls, 0.5 * (lq + lo), cfg.stable_frac)

    ref = distance_to_final(history)
    d_final = 0.5 * (ref["QK"].mean(axis=(1, 2)) + ref["OV"].mean(axis=(1, 2)))  # [N]
    settled_final = timing.settle_step(ref["steps"], d_final, cfg.stable_frac, floor=0.0)
    _write_hindsight(run_.path, ref, d_final)
    return {
        "subspace_stabilisation_step": settled,
        "subspace_lead": timing.lead(emergence, settled),
        "subspace_stabilisation": {
            k: online[k] for k in ("step", "threshold", "peak", "peak_step", "floor")
        },
        "subspace_stabilisation_by_circuit": by_circuit,
        "subspace_lead_by_circuit": {k: timing.lead(emergence, v) for k, v in by_circuit.items()},
        "subspace_stabilisation_by_layer": by_layer,
        "subspace_stabilisation_step_final_ref": settled_final,
        "subspace_lead_final_ref": timing.lead(emergence, settled_final),
        "stable_frac": cfg.stable_frac,
    }


def _write_hindsight(run_dir: Path, ref: dict[str, Any], mean: np.ndarray) -> None:
    """``hindsight.jsonl``: per kept step, the distance of QK and OV to the final matrices
    (``dist_final/QK``, ``dist_final/OV`` head means, ``dist_final/mean`` of both, and per layer
    ``dist_final/L0.QK``...). Known only at the end of the run, so not in ``metrics.jsonl``."""
    qk, ov = ref["QK"], ref["OV"]  # [N, L, H]
    rows = []
    for i, step in enumerate(ref["steps"]):
        row: dict[str, Any] = {"step": int(step), "dist_final/mean": float(mean[i])}
        row["dist_final/QK"] = float(qk[i].mean())
        row["dist_final/OV"] = float(ov[i].mean())
        for layer in range(qk.shape[1]):
            row[f"dist_final/L{layer}.QK"] = float(qk[i, layer].mean())
            row[f"dist_final/L{layer}.OV"] = float(ov[i, layer].mean())
        rows.append(row)
    write_hindsight(run_dir, rows)
