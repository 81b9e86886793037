"""The training loop: full-batch AdamW on (a op b) mod p with dynmon watching.

Per step: one full-batch forward/backward on the train set, ``optimizer.step()``, then
``mon.step(step, ...)``. Step s is the state after s updates (step 0 is the initial model).
Every ``log_every`` steps one no-grad forward over all inputs gives the train/test loss and
accuracy and the progress measures (``progress.py``), logged through ``mon.step`` under
``train/loss``, ``test/loss``, ``train/acc``, ``test/acc``, ``weight_norm`` (‖θ‖), ``gini/W_E``,
``gini/W_L``, ``restricted_loss``, ``excluded_loss``, ``n_key_freqs``. dynmon looks every
``look_every`` steps and at 30 log-spaced early steps (economy metrics, ``weight_erank`` of every
2-D weight, and ``sharpness``, the top Hessian eigenvalue of the train loss on
``sharpness_batch`` fixed train rows, every ``sharpness_every`` steps).

Online events: ``memorization`` and ``grokking`` (``dynmon.events.GrokkingDetector``),
``circuit_formation_online`` (``phases.CircuitTracker``). At the end (hindsight,
``"hindsight": true`` on the event): the final model's key frequencies are applied to every
logged step (restricted loss from the logits' coefficients kept at every log; excluded loss from
parameter snapshots kept every ``look_every`` steps), giving ``circuit_formation`` and
``cleanup``; then the lead time of every signal (``phases.moved_step``). Hindsight curves go to
``hindsight.jsonl`` in the run folder; headline figures to ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from dynmon import events
from dynmon.keys import key
from dynmon.runfolder import write_hindsight

from ..readback import dynmon_series
from ..threads import pick_threads, torch_threads
from . import phases
from . import progress as P
from .config import GrokkingConfig
from .data import Dataset, make_dataset
from .model import build_model, forward_with_acts, logits_at_eq, trainable, unembed_weights

QO = ("QK", "OV")
RESTRICTED_FINAL = "restricted_loss_final_keys"
EXCLUDED_FINAL = "excluded_loss_final_keys"

# signals whose lead before grokking the summary reports (those present in the run)
LEAD_SIGNALS = (
    *(
        key(m, c)
        for m in ("erank", "stable_rank", "subspace_dist", "subspace_dist_ref")
        for c in QO
    ),
    key("sharpness"),
    key("weight_norm"),
    key("grad_norm"),
    "weight_norm",
    "gini/W_E",
    "gini/W_L",
    "restricted_loss",
    "restricted_loss_final_keys",
    "excluded_loss_final_keys",
    "test/loss",
)


def train_loss_fn(cfg: GrokkingConfig):
    """``loss_fn(model, (tokens, labels))`` as the Monitor's curvature metrics want it."""

    def loss_fn(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        tokens, labels = batch
        return P.cross_entropy(logits_at_eq(model, tokens), labels, cfg.float64_loss)

    return loss_fn


def measure(
    model: torch.nn.Module, ds: Dataset, params: list[torch.Tensor], cfg: GrokkingConfig
) -> tuple[dict[str, float], dict[str, Any]]:
    """Losses, accuracies and progress measures of the current model (one forward, no grad).

    Returns the scalars to log and what the run keeps for hindsight (the logits' coefficients on
    the sum directions, the current key frequencies).
    """
    device = ds.tokens.device
    with torch.no_grad():
        logits, acts = forward_with_acts(model, ds.tokens)  # [N, p], [N, d_mlp]
        tr, te, y = ds.train_idx, ds.test_idx, ds.labels
        out = {
            "train/loss": P.cross_entropy(logits[tr], y[tr], cfg.float64_loss),
            "test/loss": P.cross_entropy(logits[te], y[te], cfg.float64_loss),
            "train/acc": P.accuracy(logits[tr], y[tr]),
            "test/acc": P.accuracy(logits[te], y[te]),
            # ‖θ‖, as dynmon/weight_norm (Nanda et al.'s Σ‖θ‖² is its square: see cleanup)
            "weight_norm": P.weight_norm_sq(params).sqrt(),
        }
        keep: dict[str, Any] = {}
        if cfg.op in P.FOURIER_OPS:
            W = unembed_weights(model)
            keys = P.key_frequencies(acts, cfg.p)
            out["gini/W_E"] = P.gini(P.embed_frequency_norms(W["W_E"]))
            out["gini/W_L"] = P.gini(P.unembed_frequency_norms(W["W_L"]))
            out["n_key_freqs"] = float(len(keys))
            if keys:  # with no key frequency yet the measures are undefined
                out["restricted_loss"] = P.restricted_loss(logits, y, cfg.p, keys)
                out["excluded_loss"] = P.excluded_loss(logits, y, cfg.p, keys, tr)
            keep = {"coeffs": P.sum_coefficients(logits, y, cfg.p).cpu(), "keys": keys}
    flat = torch.stack(
        [torch.as_tensor(v, dtype=torch.float64, device=device) for v in out.values()]
    )
    scalars = dict(zip(out, flat.cpu().tolist(), strict=True))  # sync point (once per log)
    return scalars, keep


def _detectors(cfg: GrokkingConfig) -> tuple[list[Any], events.GrokkingDetector]:
    """dynmon's own detectors with a GrokkingDetector on our keys (also returned on its own)."""
    # not "loss" (the same curve as train/loss) nor the restricted loss (it jumps when the key
    # frequencies change, which is no learning event); a window of 10 logs: full-batch curves
    # are smooth, and the first two windows, where no move can start, end at 2 x 10 logs
    keys = ["train/loss", "test/loss", "train/acc", "test/acc"]
    window = events.PlateauConfig(window=10)
    dets = list(events.default_detectors(keys, plateau=window))
    dets = [d for d in dets if not isinstance(d, events.GrokkingDetector)]
    grokking = events.GrokkingDetector(
        train_key="train/acc", test_key="test/acc", threshold=cfg.threshold
    )
    return [*dets, grokking], grokking


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when torch sees a GPU, else the CPU; any other name as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run(
    config: GrokkingConfig, out: Path | str, *, wandb: bool = False, group: str | None = None
) -> dict:
    """Train with the Monitor attached; write the run folder; return the summary.

    The loop runs with ``cfg.threads`` CPU threads, or the count ``pick_threads`` picks from the
    model's size when it is 0 (one for the presets' small models on CPU).
    """
    device = resolve_device(config.device)
    cfg = dataclasses.replace(config, device=str(device))  # config.json says where it ran
    out = Path(out)
    ds = make_dataset(cfg.p, cfg.op, cfg.train_frac, cfg.seed).to(device)
    model = build_model(cfg)
    params = trainable(model)
    threads = pick_threads(cfg.threads, sum(p.numel() for p in params), device)
    with torch_threads(threads):
        return _train(cfg, out, wandb, ds, model, params, group)


def _train(
    cfg: GrokkingConfig,
    out: Path,
    wandb: bool,
    ds: Dataset,
    model: torch.nn.Module,
    params: list[torch.Tensor],
    group: str | None = None,
) -> dict:
    """The loop of :func:`run` (with its thread count set)."""
    import dynmon
    from dynmon.progress import Progress, latest_event

    device = ds.tokens.device
    opt = torch.optim.AdamW(
        params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2)
    )
    # update s (1-based) runs at lr · min(1, s / warmup)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup))
    train = ds.train
    loss_fn = train_loss_fn(cfg)
    probe = train  # sharpness probe: fixed train rows drawn by the seed (or all of them)
    if 0 < cfg.sharpness_batch < len(ds.train_idx):
        g = torch.Generator().manual_seed(cfg.seed + 1)
        rows = torch.randperm(len(ds.train_idx), generator=g)[: cfg.sharpness_batch].to(device)
        probe = (train[0][rows], train[1][rows])

    # subspace_dist compares with the previous look: keep it on a regular cadence so that its
    # value is a rotation per `look_every` steps (the log-spaced looks would mix intervals)
    metrics: dict[str, Any] = {
        "economy": None,
        "subspace_dist": dynmon.every(cfg.look_every),
        "weight_erank": None,
    }
    if cfg.sharpness_every:  # dynmon always ships sharpness (dynmon.metrics.curvature)
        metrics["sharpness"] = dynmon.every(cfg.sharpness_every)
    detectors, grokking = _detectors(cfg)
    tracker = phases.CircuitTracker(threshold=cfg.threshold)
    history: dict[str, list[tuple[int, float]]] = {}
    coeffs: dict[int, torch.Tensor] = {}
    keys_seen: dict[int, list[int]] = {}
    snapshots: dict[int, list[torch.Tensor]] = {}
    t_measure = t_monitor = 0.0

    mon = dynmon.Monitor(
        model,
        run_dir=out,
        schedule=dynmon.every(cfg.look_every) | dynmon.logspace(1, cfg.steps, 30),
        metrics=metrics,
        sinks=["local", dynmon.make_sink("wandb", out, group=group)] if wandb else ["local"],
        loss_fn=loss_fn,
        probe_batch=probe,
        optimizer=opt,
        detectors=detectors,
        config=cfg,
    )

    def log(step: int) -> None:
        nonlocal t_measure, t_monitor
        t0 = time.perf_counter()
        scalars, keep = measure(model, ds, params, cfg)
        scalars["lr"] = sched.get_last_lr()[0]
        for k, v in scalars.items():
            history.setdefault(k, []).append((step, v))
        if keep:
            coeffs[step] = keep["coeffs"]
            keys_seen[step] = keep["keys"]
        t1 = time.perf_counter()
        mon.step(step, loss=scalars["train/loss"], **scalars)
        for ev in tracker.update(step, scalars):
            mon.log_event(ev.pop("kind"), ev.pop("step"), **ev)
        t_measure += t1 - t0
        t_monitor += time.perf_counter() - t1
        bar.update(step, loss=scalars["train/loss"], event=latest_event(mon.last_event))

    bar = Progress(cfg.steps, "grokking")  # a bar on a terminal, log lines otherwise
    start = time.perf_counter()
    with mon, bar:
        log(0)
        snapshots[0] = [p.detach().clone().cpu() for p in params]
        last = 0
        for step in range(1, cfg.steps + 1):
            loss = loss_fn(model, train)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            last = step
            if step % cfg.look_every == 0:
                snapshots[step] = [p.detach().clone().cpu() for p in params]
            if step % cfg.log_every == 0 or step == cfg.steps:
                log(step)
                grok = grokking.grokking_step
                if cfg.stop_after_grok and grok is not None and step >= grok + cfg.stop_after_grok:
                    break
            else:
                t1 = time.perf_counter()
                mon.step(step)
                t_monitor += time.perf_counter() - t1
                bar.update(step)
        elapsed = time.perf_counter() - start

        summary = _summarize(cfg, model, ds, params, mon, history, coeffs, keys_seen, snapshots)
        summary.update(
            steps_run=last,
            seconds=round(elapsed, 2),
            steps_per_s=round(last / elapsed, 2),
            train_steps_per_s=round(last / max(elapsed - t_measure - t_monitor, 1e-9), 2),
            seconds_measuring=round(t_measure, 2),
            seconds_in_monitor=round(t_monitor, 2),
            seconds_in_monitor_by_part={k: round(v, 3) for k, v in mon.seconds.items()},
            threads=torch.get_num_threads(),
            device=str(device),
        )
        mon.update_summary(summary)
    return summary


def _unzip(pairs: list[tuple[int, float]]) -> tuple[list[int], list[float]]:
    return [s for s, _ in pairs], [v for _, v in pairs]


def _series(history: dict[str, list[tuple[int, float]]], key: str) -> tuple[list[int], list[float]]:
    return _unzip(history.get(key, []))


def _hindsight(
    cfg: GrokkingConfig,
    model: torch.nn.Module,
    ds: Dataset,
    params: list[torch.Tensor],
    coeffs: dict[int, torch.Tensor],
    snapshots: dict[int, list[torch.Tensor]],
) -> tuple[list[int], dict[str, list[tuple[int, float]]]]:
    """Restricted and excluded loss at every kept step with the final key frequencies."""
    with torch.no_grad():
        _, acts = forward_with_acts(model, ds.tokens)
        keys = P.key_frequencies(acts, cfg.p)
        curves: dict[str, list[tuple[int, float]]] = {
            RESTRICTED_FINAL: [],
            EXCLUDED_FINAL: [],
        }
        if not keys:
            return keys, curves
        y = ds.labels
        for step, C in sorted(coeffs.items()):
            logits = P.restricted_logits_from_coefficients(C.to(y.device), y, cfg.p, keys)
            curves[RESTRICTED_FINAL].append((step, float(P.cross_entropy(logits, y))))
        final = [p.detach().clone() for p in params]
        try:
            for step, snap in sorted(snapshots.items()):
                for p, s in zip(params, snap, strict=True):
                    p.copy_(s)
                logits = logits_at_eq(model, ds.tokens)
                loss = P.excluded_loss(logits, y, cfg.p, keys, ds.train_idx)
                curves[EXCLUDED_FINAL].append((step, float(loss)))
        finally:
            for p, f in zip(params, final, strict=True):
                p.copy_(f)
    return keys, curves


def _summarize(
    cfg: GrokkingConfig,
    model: torch.nn.Module,
    ds: Dataset,
    params: list[torch.Tensor],
    mon: Any,
    history: dict[str, list[tuple[int, float]]],
    coeffs: dict[int, torch.Tensor],
    keys_seen: dict[int, list[int]],
    snapshots: dict[int, list[torch.Tensor]],
) -> dict[str, Any]:
    """Phase boundaries, hindsight events, lead times: the run's headline figures."""
    T = cfg.threshold
    steps, train_acc = _series(history, "train/acc")
    _, test_acc = _series(history, "test/acc")
    # first of each kind; detector events carry the step they are about in "at"
    found = {e["kind"]: e.get("at", e["step"]) for e in reversed(mon.events)}
    mem_curve = phases.first_at_or_above(steps, train_acc, T)
    grok_curve = phases.first_at_or_above(steps, test_acc, T)
    mem = found.get("memorization", mem_curve)
    # the detector says "generalization" when test accuracy came without a delay (ratio < 2)
    grok = found.get("grokking", found.get("generalization", grok_curve))
    summary: dict[str, Any] = {
        "memorization_step": mem,
        "grokking_step": grok,
        "memorization_step_curve": mem_curve,
        "grokking_step_curve": grok_curve,
        "train_acc_100_step": phases.first_at_or_above(steps, train_acc, 1.0),
        "delay_ratio": (grok / mem) if grok and mem else None,
        "final_train_acc": train_acc[-1],
        "final_test_acc": test_acc[-1],
        "final_train_loss": history["train/loss"][-1][1],
        "final_test_loss": history["test/loss"][-1][1],
        "threshold": T,
    }
    a100 = summary["train_acc_100_step"]
    summary["delay_ratio_100"] = (grok / a100) if grok and a100 else None

    if cfg.op not in P.FOURIER_OPS:
        summary["progress_measures"] = (
            f"op={cfg.op}: Fourier progress measures (Gini, key frequencies, restricted and "
            "excluded loss) are defined for add/sub only; not computed"
        )
        hind: dict[str, list[tuple[int, float]]] = {}
    else:
        keys, hind = _hindsight(cfg, model, ds, params, coeffs, snapshots)
        summary["key_frequencies"] = keys
        summary["key_frequency_first_seen"] = {  # first log at which a neuron vote found it
            k: next((s for s, seen in sorted(keys_seen.items()) if k in seen), None) for k in keys
        }
        _write_hindsight(mon.run_dir, hind)
        hs, restricted = _unzip(hind[RESTRICTED_FINAL])
        acc_at = dict(zip(steps, test_acc, strict=True))
        circuit = phases.circuit_formation_step(
            hs, restricted, [acc_at.get(s, 0.0) for s in hs], mem, T
        )
        wsteps, wnorm = _series(history, "weight_norm")
        wnorm_sq = [w * w for w in wnorm]  # the paper's Σ‖θ‖², whose fall rate defines cleanup
        cleanup = phases.cleanup_step(wsteps, wnorm_sq, circuit or mem, grok)
        summary["circuit_formation_step"] = circuit
        summary["circuit_formation_step_online"] = found.get("circuit_formation_online")
        summary["cleanup_step"] = cleanup
        if circuit is not None:
            mon.log_event(
                "circuit_formation",
                circuit,
                hindsight=True,
                key_frequencies=keys,
                message="restricted loss (final key frequencies) fell "
                f"{phases.CIRCUIT_DROP:.0%} below its post-memorisation peak",
            )
        if cleanup is not None:
            mon.log_event(
                "cleanup",
                cleanup,
                hindsight=True,
                message="weight norm falling at >= half its rate at grokking from here on",
            )

    # how early each signal moved before grokking
    series = {**dynmon_series(mon.run_dir), **history, **hind}
    leads: dict[str, Any] = {}
    if mem is not None and grok is not None:
        names = [k for k in LEAD_SIGNALS if k in series]
        names += sorted(k for k in series if k.startswith(key("erank", "")) and ".mlp." in k)
        for name in names:
            log = name.startswith(key("sharpness"))  # spans decades
            leads[name] = phases.moved_step(*_unzip(series[name]), mem, grok, log=log)
        for name, curve in (("test_loss", "test/loss"), ("restricted_loss", RESTRICTED_FINAL)):
            if series.get(curve):
                summary[f"{name}_half_step"] = phases.half_fall_step(
                    *_unzip(series[curve]), mem, grok
                )
    summary["lead_times"] = leads
    summary["lead_steps"] = {k: v["lead"] for k, v in leads.items()}
    return summary


def _write_hindsight(run_dir: Path | None, curves: dict[str, list[tuple[int, float]]]) -> None:
    """``hindsight.jsonl``: one object per step with the final-key-frequency curves."""
    if run_dir is None:
        return
    rows: dict[int, dict[str, Any]] = {}
    for name, pairs in curves.items():
        for step, value in pairs:
            rows.setdefault(step, {"step": step})[name] = value
    try:
        write_hindsight(run_dir, [rows[step] for step in sorted(rows)])
    except OSError as exc:  # the run's results matter more than this file
        warnings.warn(f"grokking: could not write hindsight.jsonl: {exc}", RuntimeWarning, 2)
