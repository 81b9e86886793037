"""Synthetic learning-curve families with known events, for the loss detectors' tests and benchmark.

Each generator takes a ``numpy.random.Generator`` and returns a :class:`Case`: the logged steps,
the values, and the events a person would mark on the curve (kind, step), judged on the scale
the curve lives on (log for losses spanning decades). Noise is multiplicative, heavy-tailed
(Student-t, 5 degrees of freedom) and 0.5-5 % per point; some cases log every 5 or 10 steps.

* ``exponential``: L₀·exp(−t/τ) falling 1.5-6 decades over the run: no event.
* ``power_law``: A·(1 + t/t₀)^−α, α in 0.4-1.5, falling at least one decade: no event.
* ``sigmoid_step``: a plateau, a drop by a factor 1.5-20 (a logistic step on the log scale),
  a plateau: plateau start, plateau end, cliff, plateau start.
* ``staircase``: 2-5 plateaus joined by drops of 20-60 % (the linear-ICL shape).
* ``noise``: one level and noise: one plateau from the first log.
* ``grokking_like``: a test loss that sits at ln p, rises while the training set is memorised,
  falls by a factor 2-5 over 6-14 windows, then drops 3-6 decades (grokking) and keeps falling
  exponentially: plateau start and end, rise, cliff; and its training loss, which drops 2-4
  decades at memorisation and then falls exponentially: plateau start and end, cliff, nothing
  after.

Plateaus start ``3·scale`` after a drop's centre and end ``3·scale`` before it (where the
logistic is within 5 % of its ends); a cliff is at the drop's centre.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

WINDOW = 50  # the detectors' default window in logs (PlateauConfig.window)


@dataclass
class Case:
    """One synthetic curve: steps, values and the events it holds (kind, step)."""

    family: str
    steps: np.ndarray
    values: np.ndarray
    expected: list[tuple[str, float]] = field(default_factory=list)
    every: int = 1


def _noise(rng: np.random.Generator, n: int, sigma: float, df: int = 5) -> np.ndarray:
    """Multiplicative heavy-tailed noise with log-standard deviation ``sigma``."""
    return np.exp(sigma * rng.standard_t(df, n) / math.sqrt(df / (df - 2)))


def _logistic(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(np.asarray(x, dtype=float) / 2.0))


def _grid(rng: np.random.Generator, n_logs: int) -> tuple[np.ndarray, int]:
    every = int(rng.choice([1, 1, 5, 10]))
    return np.arange(n_logs) * every, every


def exponential(rng: np.random.Generator) -> Case:
    steps, every = _grid(rng, int(rng.integers(400, 4000)))
    decades = rng.uniform(1.5, 6.0)
    t = steps / steps[-1]
    clean = rng.uniform(0.5, 5.0) * 10.0 ** (-decades * t)
    sigma = rng.uniform(0.005, 0.05)
    return Case("exponential", steps, clean * _noise(rng, len(t), sigma), [], every)


def power_law(rng: np.random.Generator) -> Case:
    steps, every = _grid(rng, int(rng.integers(400, 4000)))
    alpha = rng.uniform(0.4, 1.5)
    # t0 so that the run spans at least one decade of loss: (1 + T/t0)^α >= 10
    t0_max = steps[-1] / (10 ** (1 / alpha) - 1)
    t0 = every * rng.uniform(1.0, max(1.5, min(20.0, t0_max / every)))
    clean = rng.uniform(0.5, 5.0) * (1.0 + steps / t0) ** -alpha
    sigma = rng.uniform(0.005, 0.05)
    return Case("power_law", steps, clean * _noise(rng, len(steps), sigma), [], every)


def _log_steps(
    t: np.ndarray, levels: list[float], centers: list[float], scales: list[float]
) -> np.ndarray:
    """ln L for plateaus at ``levels`` joined by logistic steps on the log scale."""
    y = np.full_like(t, math.log(levels[0]), dtype=float)
    for j, (c, s) in enumerate(zip(centers, scales, strict=True)):
        y -= (math.log(levels[j]) - math.log(levels[j + 1])) * _logistic((t - c) / s)
    return y


def _plateau_events(centers: list[float], scales: list[float]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = [("plateau_start", 0.0)]
    for c, s in zip(centers, scales, strict=True):
        out += [("plateau_end", c - 3 * s), ("cliff", c), ("plateau_start", c + 3 * s)]
    return out


def sigmoid_step(rng: np.random.Generator) -> Case:
    every = int(rng.choice([1, 1, 5, 10]))
    first, second = rng.integers(4 * WINDOW, 12 * WINDOW, 2) * every
    steps = np.arange(0, first + second, every)
    hi = float(np.exp(rng.uniform(np.log(0.3), np.log(5.0))))
    lo = hi / rng.uniform(1.5, 20.0)
    scale = float(rng.uniform(0.5, WINDOW / 5) * every)
    y = _log_steps(steps.astype(float), [hi, lo], [float(first)], [scale])
    values = np.exp(y) * _noise(rng, len(steps), rng.uniform(0.005, 0.05))
    return Case("sigmoid_step", steps, values, _plateau_events([float(first)], [scale]), every)


def staircase(rng: np.random.Generator) -> Case:
    """2-5 plateaus of 4-12 windows, drops of 20-60 %, on the linear scale (as linear ICL)."""
    every = int(rng.choice([1, 1, 5, 10]))
    k = int(rng.integers(2, 6))
    lengths = rng.integers(4 * WINDOW, 12 * WINDOW, k) * every
    levels = [float(np.exp(rng.uniform(np.log(0.3), np.log(5.0))))]
    for _ in range(k - 1):
        levels.append(levels[-1] * (1 - rng.uniform(0.2, 0.6)))
    scales = list(rng.uniform(0.5, WINDOW / 5, k - 1) * every)
    centers = [float(c) for c in np.cumsum(lengths[:-1])]
    steps = np.arange(0, int(sum(lengths)), every)
    t = steps.astype(float)
    clean = np.full_like(t, levels[0])
    for j, (c, s) in enumerate(zip(centers, scales, strict=True)):
        clean -= (levels[j] - levels[j + 1]) * _logistic((t - c) / s)
    values = clean * _noise(rng, len(t), rng.uniform(0.005, 0.05))
    return Case("staircase", steps, values, _plateau_events(centers, scales), every)


def noise(rng: np.random.Generator) -> Case:
    steps, every = _grid(rng, int(rng.integers(400, 4000)))
    level = float(np.exp(rng.uniform(np.log(0.05), np.log(5.0))))
    values = level * _noise(rng, len(steps), rng.uniform(0.005, 0.05))
    return Case("noise", steps, values, [("plateau_start", 0.0)], every)


def grokking_like(rng: np.random.Generator) -> list[Case]:
    """A grokking run's test loss and training loss (two cases on one step grid)."""
    every = int(rng.choice([1, 1, 5, 10]))
    W = WINDOW * every
    mem = float(rng.integers(4, 8) * W)  # memorisation: the train loss drops, the test loss rises
    grok = mem + float(rng.integers(6, 14) * W)  # grokking: the test loss drops by decades
    end = grok + float(rng.integers(6, 14) * W)
    steps = np.arange(0, end, every)
    t = steps.astype(float)
    start = math.log(float(rng.integers(50, 120)))  # ln p: chance-level cross-entropy
    s_mem, s_grok = (float(rng.uniform(0.5, WINDOW / 5) * every) for _ in range(2))
    sigma = rng.uniform(0.005, 0.03)
    # training loss: plateau, drop by 2-4 decades, then an exponential fall of 2-4 more decades
    drop, tail = rng.uniform(2.0, 4.0) * math.log(10), rng.uniform(2.0, 4.0) * math.log(10)
    rate = tail / (end - mem)
    after = np.clip(t - mem - 3 * s_mem, 0.0, None)
    y_train = start - drop * _logistic((t - mem) / s_mem) - rate * after
    train = Case(
        "grokking_like_train",
        steps,
        np.exp(y_train) * _noise(rng, len(t), sigma),
        [("plateau_start", 0.0), ("plateau_end", mem - 3 * s_mem), ("cliff", mem)],
        every,
    )
    # test loss: plateau, rise by a factor 1.3-2, a slow fall, the grokking drop, an exponential
    up = math.log(rng.uniform(1.3, 2.0))
    slow = math.log(rng.uniform(2.0, 5.0)) / (grok - mem)  # ln units per step between the two
    g_drop = rng.uniform(3.0, 6.0) * math.log(10)
    g_rate = rng.uniform(1.0, 3.0) * math.log(10) / (end - grok)
    rise = up * _logistic((t - mem) / s_mem)
    drift = slow * np.clip(t - mem - 3 * s_mem, 0.0, grok - mem - 6 * s_mem)
    fall = g_drop * _logistic((t - grok) / s_grok) + g_rate * np.clip(
        t - grok - 3 * s_grok, 0, None
    )
    y_test = start + rise - drift - fall
    test = Case(
        "grokking_like_test",
        steps,
        np.exp(y_test) * _noise(rng, len(t), sigma),
        [("plateau_start", 0.0), ("plateau_end", mem - 3 * s_mem), ("rise", mem), ("cliff", grok)],
        every,
    )
    return [train, test]


FAMILIES: dict[str, Callable[[np.random.Generator], Case | list[Case]]] = {
    "exponential": exponential,
    "power_law": power_law,
    "sigmoid_step": sigmoid_step,
    "staircase": staircase,
    "noise": noise,
    "grokking_like": grokking_like,
}
KINDS = ("plateau_start", "plateau_end", "cliff", "rise")


def cases(family: str, seeds: range | list[int]) -> list[Case]:
    """The family's cases for these seeds (the grokking family gives two per seed)."""
    out: list[Case] = []
    for seed in seeds:
        made = FAMILIES[family](np.random.default_rng([seed, len(family)]))
        out.extend(made if isinstance(made, list) else [made])
    return out


def detect(case: Case, make_detector: Callable[[], object]) -> list[dict]:
    """Feed a case to a fresh detector; the closed events it reports (open ones at close left
    out: a plateau still running at the end is the right answer, not an event to score)."""
    det = make_detector()
    events: list[dict] = []
    for s, v in zip(case.steps, case.values, strict=True):
        events += det.update(int(s), {"loss": float(v)})  # type: ignore[attr-defined]
    events += det.finalize(int(case.steps[-1]))  # type: ignore[attr-defined]
    return [e for e in events if e["kind"] in KINDS and not e.get("open")]


def score(case: Case, events: list[dict], tol_windows: float = 1.0) -> tuple[int, int, int]:
    """(true positives, expected, found): one-to-one matches of kind and ``at`` within
    ``tol_windows`` windows of logs."""
    pairs, _ = match(events, case.expected, tol_windows * WINDOW * case.every)
    return len(pairs), len(case.expected), len(events)


def match(events: list[dict], expected, tol: float) -> tuple[list, list[dict]]:
    """Greedy one-to-one matching of (kind, at) within ``tol`` steps: (pairs, unmatched)."""
    used, pairs = set(), []
    for kind, t in expected:
        best = None
        for i, e in enumerate(events):
            if i in used or e["kind"] != kind or abs(e["at"] - t) > tol:
                continue
            if best is None or abs(e["at"] - t) < abs(events[best]["at"] - t):
                best = i
        if best is not None:
            used.add(best)
            pairs.append((kind, t, events[best]))
    return pairs, [e for i, e in enumerate(events) if i not in used]


def precision_recall(
    family_cases: list[Case], make_detector: Callable[[], object]
) -> tuple[float, float, list[tuple[Case, list[dict]]]]:
    """Precision and recall over the cases, and the cases with any miss or false event."""
    tp = n_true = n_found = 0
    bad = []
    for case in family_cases:
        events = detect(case, make_detector)
        a, b, c = score(case, events)
        tp, n_true, n_found = tp + a, n_true + b, n_found + c
        if a != b or a != c:
            bad.append((case, events))
    precision = tp / n_found if n_found else 1.0
    recall = tp / n_true if n_true else 1.0
    return precision, recall, bad
