"""The training loop: (S)GD on in-context regression with dynmon watching, theory alongside.

Step s is the state after s updates (step 0 is the initialisation). Every ``log_every`` steps
``mon.step`` gets the training loss (``loss``, the full-batch quadratic form, or the batch loss
under SGD), ``test/loss`` (fresh data, x_q integrated out, data.py), the theory curve where one
exists (``theory/loss``; ATTN_M with a flat spectrum: ``sigma`` and ``theory/sigma``; the linear
transformer: the integrated gradient flow, and ``conserved``). dynmon looks every ``look_every``
steps (``metric.KQ_SPECTRA`` and weight norms) and measures ``sharpness`` (top Hessian eigenvalue
of the training loss) every ``sharpness_every``. A ``PlateauCliffDetector`` on ``test/loss``
finds the plateaus; ``summary.json`` compares them with the theory levels L(M_m).

With ``ranks`` set, one run per R goes to ``out/R<r>/`` and ``out`` itself gets the sweep: each
R's test loss (``test/loss/R<r>``) with its own plateau detector, and ``plots/linear_icl.png``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynmon.keys import key

from ..readback import dynmon_series
from ..threads import pick_threads, torch_threads
from . import theory
from .config import LinearICLConfig, parse_ranks
from .data import TrainStats, batch_loss, make_task, test_stats, train_stats
from .metric import KQ_SPECTRA
from .model import LinearICL

PROBE_SEQUENCES = 4096  # the sharpness probe's fixed sequences under SGD (P = 0)
MATCH_TOL = 0.05  # a detected plateau "is" a theory level within this relative error
# numerical rank of Γ counts σ > RANK_TOL·σ₁: learned modes sit at Γ_α = 1/s∞_α, within a factor
# ~4 of each other for these spectra, while a mode still on its way up is far below
RANK_TOL = 0.1
LONG_FRAC = 0.2  # a plateau this fraction as long as the first one is "distinct"


def loss_fn(model: LinearICL, stats: TrainStats) -> torch.Tensor:
    """The full-batch training loss (the Monitor's curvature metrics call it on the probe)."""
    return stats.loss(model.folded())


def detector(cfg: LinearICLConfig, key: str = "test/loss") -> Any:
    """dynmon's plateau/cliff detector, its window in logs from the config."""
    from dynmon.events import PlateauCliffDetector, PlateauConfig

    return PlateauCliffDetector(key, PlateauConfig(window=cfg.plateau_window, min_drop=0.05))


def theory_levels(cfg: LinearICLConfig, lam: torch.Tensor) -> dict[int, float]:
    """``{m: L(M_m)}`` for the plateaus this model can show: m = 0, R, 2R, … up to what the heads
    can hold (ATTN_S), or 0 and D (ATTN_M and the linear transformer, which learn all at once)."""
    levels = theory.plateau_losses(lam, cfg.N).tolist()
    if cfg.model == "attn_s":
        top = min(cfg.D, cfg.H * cfg.R)
        ms = sorted(set(range(0, top + 1, cfg.R)) | {top})
    else:
        ms = [0, cfg.D]
    return {m: levels[m] for m in ms}


def run(
    config: LinearICLConfig, out: Path | str, *, wandb: bool = False, group: str | None = None
) -> dict:
    """Train with the Monitor attached; write the run folder(s); return the summary."""
    # linear attention on D+1 tokens: a few hundred parameters, so one thread (see ..threads)
    with torch_threads(pick_threads(config.threads, 0, "cpu")):
        if parse_ranks(config.ranks):
            return _sweep(config, Path(out), wandb, group)
        return _run_one(config, Path(out), wandb, group)


def _run_one(cfg: LinearICLConfig, out: Path, wandb: bool, group: str | None = None) -> dict:
    import dynmon

    from . import plots

    t_start = time.perf_counter()
    task = make_task(cfg.spectrum, cfg.D, cfg.N, cfg.rotate, cfg.seed)
    g_train = torch.Generator().manual_seed(cfg.seed + 1)
    stats = train_stats(task, cfg.P or PROBE_SEQUENCES, g_train)
    test = test_stats(task, cfg.P_test, torch.Generator().manual_seed(cfg.seed + 2))
    model = LinearICL(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    flat = cfg.model == "attn_m" and bool(torch.allclose(task.lam, task.lam[0].expand_as(task.lam)))
    curve = _theory_curve(cfg, task, model, flat)
    seconds_setup = time.perf_counter() - t_start

    plateau_det = detector(cfg)
    # no per-head economy metrics: LinearICL has no attention module the adapters read
    metrics: dict[Any, Any] = {"economy": False, KQ_SPECTRA: None, "norms": None}
    if cfg.sharpness_every:
        metrics["sharpness"] = dynmon.every(cfg.sharpness_every)
    mon = dynmon.Monitor(
        model,
        run_dir=out,
        schedule=dynmon.every(cfg.look_every),
        metrics=metrics,
        sinks=["local", dynmon.make_sink("wandb", out, group=group)] if wandb else ["local"],
        loss_fn=loss_fn,
        probe_batch=stats,
        optimizer=opt,
        detectors=[plateau_det],
        config=cfg,
        options={"rank_tol": RANK_TOL},
        seed=cfg.seed,
    )
    c0 = float(model.conserved())
    drift = 0.0
    history: dict[str, list[tuple[int, float]]] = {}
    t_train = t_log = t_mon = 0.0

    def log(step: int, train_loss: float) -> None:
        nonlocal drift
        with torch.no_grad():
            scalars = {"test/loss": float(test.loss(model.folded()))}
            if curve is not None:
                scalars.update({k: float(v[step // cfg.log_every]) for k, v in curve.items()})
            if flat:
                scalars["sigma"] = float(task.lam[0] * model.kq_sum().trace() / cfg.D)
            if cfg.model == "linear_transformer":
                c = float(model.conserved())
                scale = float(model.W_P[-1].square().sum() + model.W_Q[:, : cfg.D].square().sum())
                scalars["conserved"] = c
                drift = max(drift, abs(c - c0) / scale)
        for k, v in {"loss": train_loss, **scalars}.items():
            history.setdefault(k, []).append((step, v))
        monitor_step(step, loss=train_loss, **scalars)

    def monitor_step(step: int, **values: float) -> None:
        nonlocal t_mon
        t0 = time.perf_counter()
        mon.step(step, **values)
        t_mon += time.perf_counter() - t0

    g_batch = torch.Generator().manual_seed(cfg.seed + 3)
    with mon:
        for step in range(cfg.steps + 1):
            t0 = time.perf_counter()
            if cfg.P:
                loss = stats.loss(model.folded())
            else:
                C, x_q, y_q, _ = task.sample(cfg.batch, g_batch)
                loss = batch_loss(model.folded(), C, x_q, y_q)
            t1 = time.perf_counter()
            if step % cfg.log_every == 0 or step == cfg.steps:
                log(step, float(loss.detach()))  # sync point (once per log)
            elif step % cfg.look_every == 0 or (
                cfg.sharpness_every and step % cfg.sharpness_every == 0
            ):
                monitor_step(step)
            t2 = time.perf_counter()
            if step < cfg.steps:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            t_train += (t1 - t0) + (time.perf_counter() - t2)
            t_log += t2 - t1
        # the plateau still open at the end: the Monitor records it at close, the summary needs it
        events = mon.events + plateau_det.finalize(cfg.steps)
        summary = _summarize(cfg, task, model, test, events, mon.run_dir, history, flat)
        if cfg.model == "linear_transformer":
            summary["conserved_initial"] = c0
            summary["conserved_max_rel_drift"] = drift
        elapsed = time.perf_counter() - t_start
        summary.update(
            steps_run=cfg.steps,
            seconds=round(elapsed, 2),
            seconds_setup=round(seconds_setup, 2),
            seconds_monitoring=round(t_log, 2),  # logging: test loss, theory, mon.step
            seconds_in_monitor=round(t_mon, 2),  # inside mon.step only, as the other packs
            seconds_in_monitor_by_part={k: round(v, 3) for k, v in mon.seconds.items()},
            steps_per_s=round(cfg.steps / elapsed, 1),
            train_steps_per_s=round(cfg.steps / max(t_train, 1e-9), 1),
        )
        mon.update_summary(summary)
    plots.draw(out, summary)
    return summary


def _theory_curve(
    cfg: LinearICLConfig, task: Any, model: LinearICL, flat: bool
) -> dict[str, np.ndarray] | None:
    """Theory at every log step: ATTN_M (flat spectrum) σ̃(t) and its loss; the linear
    transformer's integrated gradient flow; None where theory gives levels only."""
    steps = np.arange(0, cfg.steps + cfg.log_every, cfg.log_every, dtype=float)
    steps = np.minimum(steps, cfg.steps)
    trace = float(task.lam.sum())
    if flat:
        lam = float(task.lam[0])
        with torch.no_grad():
            s0 = theory.attn_m_sigma0(model.head_values(), model.head_kq(), cfg.N, lam)
        sig = theory.attn_m_sigma(
            theory.attn_m_time(steps, cfg.lr, cfg.N, lam, cfg.D), cfg.D, cfg.N, s0
        )
        return {"theory/sigma": sig, "theory/loss": theory.attn_m_loss(sig, cfg.D, cfg.N, trace)}
    if cfg.model == "linear_transformer":
        with torch.no_grad():
            p0, Q0 = float(model.W_P[-1, -1]), model.W_Q[: cfg.D, : cfg.D].clone()
        _, _, loss = theory.lt_trajectory(p0, Q0, task.cov, cfg.N, cfg.lr, steps)
        return {"theory/loss": loss}
    return None


def _at(series: list[tuple[int, float]], step: float) -> float | None:
    """The logged value nearest to ``step``."""
    if not series:
        return None
    return min(series, key=lambda sv: abs(sv[0] - step))[1]


def plateaus_from_events(events: list[dict], key: str = "test/loss") -> list[dict[str, Any]]:
    """``[{level, start, end, open}]`` from the detector's ``plateau_end`` events, in order."""
    found = [
        {"level": e["level"], "start": e["start"], "end": e["end"], "open": bool(e.get("open"))}
        for e in events
        if e.get("kind") == "plateau_end" and e.get("key") == key
    ]
    return sorted(found, key=lambda p: p["start"])


def distinct_plateaus(plateaus: list[dict], final_level: float) -> list[dict]:
    """The long plateaus before the last level: each lasts at least ``LONG_FRAC`` of the first
    (the escape from the initialisation) and sits above the final theory level.
    docs/packs.md#linear-icl counts m = 0, R, …, D − R (D/R of them); a plateau where the next
    pair of an already grown head takes over (m not a multiple of R) is brief, measured here at
    0.07-0.16 of the first, against 0.24 and up for a new head's escape. A heuristic: the counts
    in the tests hold."""
    if not plateaus:
        return []
    floor = LONG_FRAC * (plateaus[0]["end"] - plateaus[0]["start"])
    return [
        p
        for p in plateaus
        if p["end"] - p["start"] >= floor and p["level"] > final_level * (1 + MATCH_TOL)
    ]


def match_levels(plateaus: list[dict], levels: dict[int, float]) -> list[dict[str, Any]]:
    """Each theory level with the detected plateau nearest to it (relative error)."""
    rows = []
    for m, level in levels.items():
        best = min(plateaus, key=lambda p: abs(p["level"] - level) / level, default=None)
        err = None if best is None else (best["level"] - level) / level
        rows.append(
            {
                "m": m,
                "theory": level,
                "measured": best and best["level"],
                "rel_error": err,
                "start": best and best["start"],
            }
        )
    return rows


def _summarize(
    cfg: LinearICLConfig,
    task: Any,
    model: LinearICL,
    test: Any,
    events: list[dict],
    run_dir: Path | None,
    history: dict[str, list[tuple[int, float]]],
    flat: bool,
) -> dict[str, Any]:
    """Plateaus against L(M_m), the final loss against theory, the KQ ranks on each plateau."""
    levels = theory_levels(cfg, task.lam)
    plateaus = plateaus_from_events(events)
    dyn = dynmon_series(run_dir)
    for p in plateaus:  # the learned map's ranks in the middle of each plateau
        mid = (p["start"] + p["end"]) / 2
        p["kq_numerical_rank"] = _at(dyn.get(key("numerical_rank", "KQ"), []), mid)
        p["kq_erank"] = _at(dyn.get(key("erank", "KQ"), []), mid)
    matches = match_levels(plateaus, levels)
    all_levels = theory.plateau_losses(task.lam, cfg.N).tolist()
    for p in plateaus:  # which L(M_m) each plateau sits on (any m), None if none within MATCH_TOL
        m = min(range(len(all_levels)), key=lambda i: abs(p["level"] / all_levels[i] - 1))
        p["m"] = m if abs(p["level"] / all_levels[m] - 1) <= MATCH_TOL else None
    distinct = distinct_plateaus(plateaus, levels[max(levels)])
    final_theory = levels[max(levels)]
    final = history["test/loss"][-1][1]
    with torch.no_grad():
        Gam = model.kq_sum()
        G_star = theory.optimal_gamma(task.cov, cfg.N)
    summary: dict[str, Any] = {
        "model": cfg.model,
        "eigenvalues": task.lam.tolist(),
        "plateaus": plateaus,
        "theory_plateaus": [{"m": m, "level": v} for m, v in levels.items()],
        "plateau_match": matches,
        "plateau_rel_errors": [r["rel_error"] for r in matches],
        "distinct_plateaus": len(distinct),
        "distinct_plateau_m": [p["m"] for p in distinct],
        "detected_plateaus": len(plateaus),
        "final_test_loss": final,
        "final_train_loss": history["loss"][-1][1],
        "final_theory_loss": final_theory,
        "final_rel_error": (final - final_theory) / final_theory,
        "final_population_loss_of_gamma": float(theory.population_loss(Gam, task.cov, cfg.N)),
        "gamma_rel_error": float((Gam - G_star).norm() / G_star.norm()),
    }
    if flat:
        summary.update(_sigma_fit(cfg, history))
    if "theory/loss" in history and cfg.model == "linear_transformer":
        meas = np.array([v for _, v in history["test/loss"]])
        th = np.array([v for _, v in history["theory/loss"]])
        summary["theory_curve_max_rel_error"] = float(np.max(np.abs(meas - th) / th))
    return summary


def _sigma_fit(cfg: LinearICLConfig, history: dict[str, list[tuple[int, float]]]) -> dict:
    """ATTN_M: the measured σ̃ against σ̃(t), and the steps where each crosses half-way."""
    steps = np.array([s for s, _ in history["sigma"]], dtype=float)
    meas = np.array([v for _, v in history["sigma"]])
    th = np.array([v for _, v in history["theory/sigma"]])
    top = 1 / theory.attn_m_c(cfg.D, cfg.N)

    def half(y: np.ndarray) -> float | None:
        idx = np.nonzero(y >= top / 2)[0]
        if not len(idx) or idx[0] == 0:
            return None
        i = idx[0]  # interpolate between the two logs around the crossing
        return float(np.interp(top / 2, [y[i - 1], y[i]], [steps[i - 1], steps[i]]))

    h_meas, h_th = half(meas), half(th)
    # horizontal error: when theory reaches each measured level between 5% and 95% of σ̃∞
    inside = (meas > 0.05 * top) & (meas < 0.95 * top) & (steps > 0)
    t_th = np.interp(meas[inside], th, steps)  # theory is increasing
    time_err = np.abs(t_th - steps[inside]) / steps[inside]
    return {
        "sigma_final": float(meas[-1]),
        "sigma_theory_final": float(th[-1]),
        "sigma_max_error": float(np.max(np.abs(meas - th)) / top),  # relative to σ̃∞ = 1/c
        "sigma_max_time_error": float(time_err.max()) if len(time_err) else None,
        "half_drop_step": h_meas,
        "half_drop_step_theory": h_th,
        "half_drop_rel_error": (h_meas - h_th) / h_th if h_meas and h_th else None,
        "time_map": "t/tau = step * ln(1 + 2 lr N lam^2 sqrt(D)) / sqrt(D) ~ 2 lr N lam^2 step",
    }


def _sweep(cfg: LinearICLConfig, out: Path, wandb: bool, group: str | None = None) -> dict:
    """One run per R into ``out/R<r>/``; ``out`` holds the test losses side by side."""
    import dynmon

    from . import plots

    runs: dict[str, dict] = {}
    for r in parse_ranks(cfg.ranks):
        sub = dataclasses.replace(cfg, R=r, ranks="")
        runs[f"R{r}"] = _run_one(sub, out / f"R{r}", wandb, group)
    curves = {
        name: list(zip(*dynmon.load_run(out / name).series("test/loss"), strict=True))
        for name in runs
    }
    keys = {name: f"test/loss/{name}" for name in runs}
    dets = [detector(cfg, k) for k in keys.values()]
    mon = dynmon.Monitor(torch.nn.Module(), run_dir=out, metrics=[], detectors=dets, config=cfg)
    with mon:
        steps = sorted({s for c in curves.values() for s, _ in c})
        by_step = {name: dict(c) for name, c in curves.items()}
        for s in steps:
            mon.step(s, **{keys[n]: by_step[n][s] for n in runs if s in by_step[n]})
        summary = {
            "ranks": parse_ranks(cfg.ranks),
            "distinct_plateaus": {n: runs[n]["distinct_plateaus"] for n in runs},
            "expected_plateaus": {n: cfg.D // int(n[1:]) for n in runs},
            "plateaus": {n: runs[n]["plateaus"] for n in runs},
            "theory_plateaus": {n: runs[n]["theory_plateaus"] for n in runs},
            "plateau_rel_errors": {n: runs[n]["plateau_rel_errors"] for n in runs},
            "final_test_loss": {n: runs[n]["final_test_loss"] for n in runs},
            "final_theory_loss": {n: runs[n]["final_theory_loss"] for n in runs},
            "seconds": round(sum(runs[n]["seconds"] for n in runs), 2),
            "steps_per_s": {n: runs[n]["steps_per_s"] for n in runs},
        }
        mon.update_summary(summary)
    plots.draw_sweep(out, summary)
    return summary


__all__ = ["run", "loss_fn", "theory_levels", "plateaus_from_events", "match_levels"]
