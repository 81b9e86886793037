"""The trend engine behind the scalar detectors: streaming segmentation into plateaus and moves.

A series is cut online into plateaus (flat within noise) and fast moves (rising or falling
beyond noise); :class:`Trend` returns internal records that the detectors of
:mod:`dynmon.events` word as events. Kept apart so the detectors read as wording and key rules.

One file (~600 lines) on purpose: it is one class whose state (ring, running sums, open plateau
or move) every step of the segmentation reads and writes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["Trend"]

SLOWED = 0.2  # a move is over once its rate fell below this share of its peak rate
SETTLE_Z = 2.0  # ... with this many standard errors of confidence when judged on half a window
SLOW_LOGS = 3  # consecutive slow windows that end a move
PAST_PEAK = 0.9  # a move may settle once its windowed change fell below this share of its peak
JOINED = 0.5  # a move whose slope stopped easing below this share of its peak joined a trend


class Trend:
    """Streaming segmentation of one series into plateaus and fast moves (bounded memory).

    Keeps the last ``2 × window`` points in a ring and running sums over the last ``window``
    (re-anchored every ``window`` points against rounding drift), so an update is O(1); the
    change-point estimates run over the ring only when an event fires. ``update`` returns
    internal records: ``("plateau_start", info)``, ``("plateau_end", info)``,
    ``("move_start", info)``, ``("move_end", info)``; levels are in the transformed units y.
    """

    def __init__(
        self,
        window: int,
        flat_tol: float,
        fast_tol: float,
        drift_tol: float,
        z_flat: float,
        z_fast: float,
        min_length: int = 0,
        relative: bool = False,
        min_move: float = math.inf,
        detrend: bool = False,
        trend_tol: float = math.inf,
    ) -> None:
        self.W, self.C = int(window), 2 * int(window)
        # detrend: moves are judged against the slope one window earlier, and plateaus are
        # announced only when flat on the curve's time scale (see PlateauConfig)
        self.detrend, self.trend_tol = detrend, trend_tol
        self.slopes = [0.0] * self.W  # slope fitted at each of the last W updates, by n % W
        self.t_origin: float | None = None  # the first step seen, and the first log spacing
        self.h0: float | None = None
        self.move_end_n: int | None = None  # points pushed when the last move ended
        self.base_slope: float | None = None  # EMA of the slopes of windows 1-2 windows back
        self.trend_from = 2 * self.W  # points pushed before a trend can be read
        self.trend_slope = 0.0  # the trend's slope when a move starts
        self.flat_tol, self.fast_tol, self.drift_tol = flat_tol, fast_tol, drift_tol
        self.z_flat, self.z_fast = z_flat, z_fast
        self.min_length, self.relative, self.min_move = int(min_length), relative, min_move
        self.unit = 1.0  # multiplies the tolerances (100 for an accuracy logged in percent)
        self.ts = [0.0] * self.C
        self.ys = [0.0] * self.C
        self.n = 0  # points pushed so far (the ring holds the last min(n, C))
        self.t0 = self.y0 = 0.0  # anchors of the running sums
        self.s = [0.0] * 5  # Σu, Σv, Σuu, Σuv, Σvv over the window, u = t − t0, v = y − y0
        self.since = 0  # pushes since the sums were last recomputed
        self.noise: float | None = None  # robust running estimate of the point noise σ
        self.noise_init: list[float] = []  # first ``window`` normalised residuals (warm-up)
        self.plateau: dict[str, Any] | None = None
        self.move: dict[str, Any] | None = None
        self.calm: dict[str, float] | None = None  # level a new move leaves from
        self.last_plateau: dict[str, Any] | None = None  # the plateau that ended last
        self.last_move_end: float | None = None
        self.last_sign = 0.0  # direction of the last move
        self.q = max(3, self.W // 4)  # points in the short level estimate

    # - ring and running sums -
    def _push(self, t: float, y: float) -> None:
        W, C = self.W, self.C
        if self.t_origin is None:
            self.t_origin = t
        elif self.h0 is None:
            self.h0 = max(t - self.t_origin, 1e-12)
        if self.n >= W:  # the oldest point leaves the window
            k = (self.n - W) % C
            self._add(self.ts[k], self.ys[k], -1.0)
        self.ts[self.n % C], self.ys[self.n % C] = t, y
        self.n += 1
        self._add(t, y, 1.0)
        self.since += 1
        if self.since >= W:
            self._recompute()
        if self.n >= 3:
            self._update_noise()

    def _update_noise(self) -> None:
        """Noise from the point-to-chord residual of each middle point of three (trend-free).

        r = y₂ − (h₊y₁ + h₋y₃)/(h₋ + h₊) has variance σ²(1 + (h₋² + h₊²)/(h₋ + h₊)²) for iid
        noise on any grid, and a jump or a bend touches only one or two residuals. σ is
        estimated from the mean |r| (× √(π/2)), which heavy-tailed SGD noise biases far less
        than a median would: the first ``window`` residuals give the start, then an EMA over
        about four windows of residuals clipped at 5σ (plus the flat tolerance, so that a
        noiseless start can still grow).
        """
        i1, i2, i3 = ((self.n - k) % self.C for k in (3, 2, 1))
        t1, t2, t3 = self.ts[i1], self.ts[i2], self.ts[i3]
        hm, hp = t2 - t1, t3 - t2
        chord = (hp * self.ys[i1] + hm * self.ys[i3]) / (hm + hp)
        r = abs(self.ys[i2] - chord) / math.sqrt(1.0 + (hm * hm + hp * hp) / (hm + hp) ** 2)
        r *= math.sqrt(math.pi / 2.0)  # E|r| = σ√(2/π) for Gaussian noise
        if self.noise is None:
            self.noise_init.append(r)
            if len(self.noise_init) >= self.W:
                self.noise, self.noise_init = _clipped_mean(self.noise_init), []
            return
        cap = 5.0 * self.noise + self._tol(self.flat_tol, self.ys[i2])
        self.noise += (min(r, cap) - self.noise) * 2.0 / (4 * self.W + 1)

    def sigma(self) -> float:
        """The current noise estimate (standard deviation of one point)."""
        if self.noise is not None:
            return self.noise
        return _clipped_mean(self.noise_init) if self.noise_init else 0.0

    def _add(self, t: float, y: float, sign: float) -> None:
        u, v = t - self.t0, y - self.y0
        s = self.s
        s[0] += sign * u
        s[1] += sign * v
        s[2] += sign * u * u
        s[3] += sign * u * v
        s[4] += sign * v * v

    def _recompute(self) -> None:
        """Re-anchor at the window's first point and sum afresh (kills accumulated rounding)."""
        ts, ys = self.window_points()
        self.t0, self.y0 = ts[0], ys[0]
        self.s = [0.0] * 5
        for t, y in zip(ts, ys, strict=True):
            self._add(t, y, 1.0)
        self.since = 0

    def points(self, m: int | None = None) -> tuple[list[float], list[float]]:
        """The last ``m`` points of the ring (all it holds when None), oldest first."""
        have = min(self.n, self.C)
        m = have if m is None else min(m, have)
        idx = [(self.n - m + j) % self.C for j in range(m)]
        return [self.ts[i] for i in idx], [self.ys[i] for i in idx]

    def window_points(self) -> tuple[list[float], list[float]]:
        return self.points(self.W)

    def fit(self) -> dict[str, float]:
        """Least-squares line over the window: level, change across it and their errors."""
        W = min(self.n, self.W)
        su, sv, suu, suv, _ = self.s
        ub, vb = su / W, sv / W
        sxx = max(suu - W * ub * ub, 1e-300)
        sxy = suv - W * ub * vb
        b = sxy / sxx
        sigma = self.sigma()
        var = sigma * sigma
        t_first = self.ts[(self.n - W) % self.C]
        t_last = self.ts[(self.n - 1) % self.C]
        span = t_last - t_first
        tbar = self.t0 + ub
        mean = self.y0 + vb
        dt = t_last - tbar
        return {
            "mean": mean,
            "tbar": tbar,
            "span": span,
            "t_first": t_first,
            "t_last": t_last,
            "delta": b * span,
            "se_delta": math.sqrt(var / sxx) * span,
            "end": mean + b * dt,
            "se_end": math.sqrt(var * (1.0 / W + dt * dt / sxx)),
            "sigma": sigma,
        }

    # - thresholds -
    def _tol(self, tol: float, level: float) -> float:
        return tol * (max(abs(level), 1e-12) if self.relative else self.unit)

    # - change-point estimates (O(ring) and only when an event fires) -
    def _departure(self, mu: float, sign: float, t_min: float, kappa: float) -> float:
        """Page's CUSUM from ``t_min``: the step after its last zero is where the move began."""
        ts, ys = self.points()
        s, start = 0.0, None
        for t, y in zip(ts, ys, strict=True):
            if t < t_min:
                continue
            if start is None:
                start = t
            s = max(0.0, s + sign * (y - mu) - kappa)
            if s == 0.0:
                start = None
        return start if start is not None else ts[-1]

    def _arrival(self, mu: float, sign: float, t_min: float, kappa: float, h: float) -> float:
        """Backward CUSUM: the earliest step of the latest run consistent with level ``mu``.

        ``sign`` is +1 when the points before the arrival lay above ``mu``. Walking back from
        the newest point (not before ``t_min``), the run ends where the CUSUM of
        ``sign·(y − mu) − kappa`` exceeds ``h``; the arrival is the CUSUM's last zero before that.
        """
        ts, ys = self.points()
        s, earliest, last_zero = 0.0, ts[-1], ts[-1]
        for t, y in zip(reversed(ts), reversed(ys), strict=True):
            if t < t_min:
                break
            s = max(0.0, s + sign * (y - mu) - kappa)
            if s > h:
                return last_zero
            if s == 0.0:
                last_zero = t
            earliest = t
        return earliest

    # - the state machine -
    def short_mean(self) -> float:
        """Mean of the last ``q`` points: the current level, robust to a jump inside the window."""
        _, ys = self.points(self.q)
        return sum(ys) / len(ys)

    def update(self, t: float, y: float) -> list[tuple[str, dict[str, Any]]]:
        """Add one point; return the segment boundaries it reveals."""
        self._push(t, y)
        if self.n < self.W:
            return []
        f = self.fit()
        out: list[tuple[str, dict[str, Any]]] = []
        level = f["mean"]
        fast = max(self._tol(self.fast_tol, level), self.z_fast * f["se_delta"])
        flat = max(self._tol(self.flat_tol, level), self.z_flat * f["se_delta"])
        direction = 1.0 if f["delta"] > 0 else -1.0
        change = abs(f["delta"])
        slope = f["delta"] / f["span"] if f["span"] > 0 else 0.0
        slot, W = self.n % self.W, self.W
        # the window one window back, once it lies wholly after the start and the last move
        earlier = self.slopes[slot] if self.n >= self.trend_from else None
        half = self.slopes[(self.n - W // 2) % W] if self.n >= W + W // 2 else None
        self.slopes[slot] = slope
        if earlier is not None:  # the trend: slopes of windows ending 1-2 windows back, averaged
            b = self.base_slope
            self.base_slope = earlier if b is None else b + (earlier - b) * 2.0 / (W + 1)
        # the change beyond the earlier trend: what makes a move fast (an announced plateau is
        # the trend itself: flat)
        if not self.detrend or self._on_plateau():
            beyond = f["delta"]
        elif self.base_slope is None:
            beyond = 0.0  # no trend to compare with yet: no move starts in the first 2 windows
        else:
            beyond = f["delta"] - self.base_slope * f["span"]
        fast_beyond = max(self._tol(self.fast_tol, level), self.z_fast * 1.5 * f["se_delta"])
        accelerating = direction * beyond > (fast_beyond if self.detrend else fast)
        self.trend_slope = (
            self.base_slope if (self.detrend and self.base_slope is not None) else 0.0
        )
        kappa = max(self._tol(self.flat_tol, level), f["sigma"]) / 2.0
        # a move just ended leaves its step inside the window for a while: not a new move
        echo = (
            self.last_move_end is not None
            and f["t_first"] <= self.last_move_end
            and direction == self.last_sign
        )
        mv = self.move
        if mv is not None:
            going = direction == mv["sign"] and change > max(flat, min(SLOWED * mv["peak"], fast))
            if going and self.detrend and half is not None and change < JOINED * mv["peak"]:
                # its slope stopped easing: the move has joined the curve's new steady trend
                steady = abs(slope - half) * f["span"] <= max(
                    self._tol(self.flat_tol, level), self.z_flat * 1.5 * f["se_delta"]
                )
                going = not steady
            mv["slow"] = 0 if going else mv["slow"] + 1
            if going:
                if change > mv["peak"]:
                    mv["peak"], mv["steepest"], mv["peak_span"] = change, f["tbar"], f["span"]
                mv["extreme"] = f["end"]
            settled = None
            if change < PAST_PEAK * mv["peak"]:  # the steepest point is behind us
                settled = self._settled(mv, f["sigma"])
            turned = direction != mv["sign"] and change > fast
            if settled is not None:  # the level has held for half a window: over
                out.extend(self._end_move(f, kappa, settled))
            elif turned or mv["slow"] >= SLOW_LOGS:  # slowed to a fifth of its peak (or flat)
                out.extend(self._end_move(f, kappa))
                if turned:
                    out.append(self._start_move(f, direction, kappa))
        elif change > fast and accelerating and not echo:
            out.append(self._start_move(f, direction, kappa))
        # the level a move would leave from; while no trend is known yet (the first two windows)
        # a fast window keeps the last calm level, so a fall seen late is dated from its start
        unknown = self.detrend and self.base_slope is None and change > fast and not echo
        if self.move is None and not (unknown and self.calm is not None):
            lv = self.short_mean() if echo else f["end"]
            self.calm = {"level": lv, "t_first": f["t_first"]}
        if self.plateau is not None:
            out.extend(self._check_plateau(f, y, kappa))
        elif self.move is None and change <= self._flat_after_drift(flat, direction, level, f):
            out.extend(self._start_plateau(f, kappa))
        return out

    def _on_plateau(self) -> bool:
        """On an announced plateau, or leaving one that ended within two windows (its trend is
        flat, whatever the slope of the windows that straddle the departure)."""
        if self.plateau is not None:
            return bool(self.plateau["announced"])
        lp = self.last_plateau
        recent = lp is not None and lp.get("announced", True) and self.n - lp["n"] <= 2 * self.W
        return bool(recent) and self.move is None and self.last_move_end_before(lp)

    def last_move_end_before(self, lp: dict[str, Any]) -> bool:
        """No move has ended since the plateau ``lp`` ended."""
        return self.last_move_end is None or self.last_move_end < lp["end"]

    def _flat_after_drift(self, flat: float, direction: float, level: float, f: dict) -> float:
        """The flat bound, a third as wide while the level drifts on from a plateau left by drift.

        Without it a slow, steady decline (a power law late in training, the slow escape from a
        plateau) would be cut into a chain of short plateaus, one per ``drift_tol``.
        """
        lp = self.last_plateau
        if lp is None or lp["reason"] != "drift" or lp["sign"] != direction:
            return flat
        if self.last_move_end is not None and self.last_move_end >= lp["end"]:
            return flat  # a move came in between: that drift is over
        return max(self._tol(self.flat_tol, level) / 3.0, self.z_flat * f["se_delta"])

    def _settled(self, mv: dict[str, Any], sigma: float) -> tuple | None:
        """(end, level) when the points since the steepest step end in a flat run of ≥ W/2 logs.

        Walks back from the newest point with a CUSUM (allowance σ/2, threshold 4σ) of the
        deviations towards where the move came from (capped at 3σ: one outlier cannot end the
        run), relative to the mean of the last ``q`` points: the run is the stretch after its
        last zero before it exceeds the threshold. The run's own slope must then be, with
        ``SETTLE_Z`` standard errors to spare, below ``SLOWED`` of the move's peak rate. Only
        asked once the windowed change fell below ``PAST_PEAK`` of its peak, so an accelerating
        move never settles early.
        """
        ts, ys = self.points(self.W)
        to = sum(ys[-self.q :]) / self.q
        # noise-scaled allowance (not the flat tolerance): a slow move must break the run
        sign, kappa, h = -mv["sign"], sigma / 2.0, 4.0 * sigma
        cap = 3.0 * sigma if sigma > 0 else math.inf  # one outlier cannot end the run
        acc, first = 0.0, len(ts) - 1
        for i in range(len(ts) - 1, -1, -1):
            if ts[i] < mv["steepest"]:
                break  # the run reaches back to the steepest point
            acc = max(0.0, acc + min(sign * (ys[i] - to), cap) - kappa)
            if acc == 0.0:
                first = i
            elif acc > h:
                break
        m = len(ts) - first
        if m < self.W // 2:
            return None
        tp, post = ts[first:], ys[first:]
        tm, ym = sum(tp) / m, sum(post) / m
        sxx = sum((t - tm) ** 2 for t in tp)
        slope = sum((t - tm) * (y - ym) for t, y in zip(tp, post, strict=True)) / sxx
        # settled only if the run's slope is, with confidence, below a fifth of the peak rate
        rate = mv["peak"] / max(mv["peak_span"], 1e-300)
        if max(-sign * slope, 0.0) + SETTLE_Z * sigma / math.sqrt(sxx) > SLOWED * rate:
            return None
        return ts[first], ym

    def _start_plateau(self, f: dict[str, float], kappa: float) -> list:
        """A flat window: open a plateau at the earliest point consistent with its level."""
        ts, ys = self.points()
        t_min = ts[0]  # the ring reaches up to one window further back
        if self.last_move_end is not None:
            t_min = max(t_min, self.last_move_end)
        if self.last_plateau is not None:
            t_min = max(t_min, self.last_plateau["end"])
        if self.n <= self.C and self.last_move_end is None and self.last_plateau is None:
            return self._open_plateau(ts[0], f)  # flat from the first log on
        before = [y for t, y in zip(ts, ys, strict=True) if t_min <= t < f["t_first"]]
        sign = 1.0 if before and sum(before) / len(before) > f["mean"] else -1.0
        h = 4.0 * max(kappa, f["sigma"])
        start = self._arrival(f["mean"], sign, t_min, kappa, h)
        return self._open_plateau(start, f)

    def _open_plateau(self, start: float, f: dict[str, float]) -> list:
        ts, ys = self.points()
        after_move = self.move_end_n is not None and self.n - self.move_end_n <= 2 * self.W
        self.plateau = {
            "start": start,
            "sum": 0.0,
            "count": 0,
            "announced": False,
            "last": f["t_last"],
            "after_move": after_move,
            "s": [0.0] * 8,  # Σu Σuu Σuy Σx Σxx Σxy Σy Σ1 (u = t − start, x = ln time)
        }
        for t, y in zip(ts, ys, strict=True):
            if t >= start:
                self._plateau_add(t, y)
        return self._announce(f)

    def _restretch(self, p: dict[str, Any]) -> None:
        """Judge the plateau from the last window on (its start, and level, stay)."""
        p["s"] = [0.0] * 8
        level_sum, count = p["sum"], p["count"]
        ts, ys = self.window_points()
        for t, y in zip(ts, ys, strict=True):
            if t >= p["start"]:
                self._plateau_add(t, y)
        p["sum"], p["count"] = level_sum, count

    def _plateau_add(self, t: float, y: float) -> None:
        """One more point of the open plateau (its level and the sums behind its two slopes)."""
        p = self.plateau
        assert p is not None
        p["sum"] += y
        p["count"] += 1
        u = t - p["start"]
        x = math.log(t - (self.t_origin or 0.0) + (self.h0 or 1.0))  # log time since the run began
        for i, v in enumerate((u, u * u, u * y, x, x * x, x * y, y, 1.0)):
            p["s"][i] += v

    def _flat_in_time(self, f: dict[str, float], after_move: bool) -> bool:
        """Whether the plateau's own stretch is flat: its change in steps within the flat bound,
        and (unless it is the level a move just arrived at) its log-log slope within
        ``trend_tol`` with ``z_flat`` standard errors to spare (a power law's slope is −α).
        The stretch must hold 1.5 windows after a move, else two windows."""
        p = self.plateau
        assert p is not None
        su, suu, suy, sx, sxx, sxy, sy, n = p["s"]
        if n < (self.W if after_move else 2 * self.W):
            return False
        sigma, mean = f["sigma"], sy / n
        span = f["t_last"] - p["start"]
        cuu, cxx = suu - su * su / n, sxx - sx * sx / n
        if cuu <= 0 or cxx <= 0:
            return False
        change = (suy - su * sy / n) / cuu * span
        bound = max(self._tol(self.flat_tol, mean), self.z_flat * sigma / math.sqrt(cuu) * span)
        if abs(change) > bound:
            return False
        if after_move or not math.isfinite(self.trend_tol):
            return True
        elasticity = (sxy - sx * sy / n) / cxx
        return abs(elasticity) + self.z_flat * sigma / math.sqrt(cxx) <= self.trend_tol

    def _announce(self, f: dict[str, float]) -> list:
        p = self.plateau
        assert p is not None
        if p["announced"] or f["t_last"] - p["start"] < self.min_length:
            return []
        if self.detrend and not self._flat_in_time(f, p["after_move"]):
            if p["s"][7] >= 2 * self.W:  # judged on two windows and not flat: keep the last one
                self._restretch(p)
            return []  # flat for a window, but maybe a slow steady decline: wait for more
        p["announced"] = True
        level = p["sum"] / p["count"]
        return [("plateau_start", {"start": p["start"], "level": level, "span": f["span"]})]

    def _check_plateau(self, f: dict[str, float], y: float, kappa: float) -> list:
        """Extend the plateau (not while a move is under way) or end it once its level moved.

        A fast move alone does not end a plateau: a noise burst or a small dip that comes
        back must not split it. It ends when the level of the last ``q`` points has left it by
        ``drift_tol`` (and ``z_fast`` standard errors), or when a move that started on it ends
        ``min_move`` away.
        """
        p = self.plateau
        assert p is not None
        if self.move is None:
            self._plateau_add(f["t_last"], y)
            p["last"] = f["t_last"]
        level = p["sum"] / p["count"]
        now = self.short_mean()
        drift = max(self._tol(self.drift_tol, level), self.z_fast * f["sigma"] / self.q**0.5)
        if abs(now - level) > drift:
            sign = 1.0 if now > level else -1.0
            moving = self.move is not None and self.move["sign"] == sign
            reason = ("rise" if sign > 0 else "cliff") if moving else "drift"
            return self._end_plateau(sign, kappa, reason)
        return self._announce(f) if self.move is None else []

    def _end_plateau(self, sign: float, kappa: float, reason: str) -> list:
        p = self.plateau
        assert p is not None
        level = p["sum"] / p["count"]
        end = self._departure(level, sign, p["start"], kappa)
        self.plateau = None
        self.last_plateau = {"level": level, "end": end, "n": self.n, "used": False}
        self.last_plateau["announced"] = p["announced"]
        self.last_plateau.update(reason=reason, sign=sign)
        if self.move is not None and self.move["from_plateau"]:
            self.move["start"] = end  # the move began where the plateau ended
            self.last_plateau["used"] = True
        if not p["announced"]:
            return []
        info = {"start": p["start"], "end": end, "level": level, "reason": reason}
        return [("plateau_end", info)]

    def _start_move(self, f: dict[str, float], sign: float, kappa: float) -> tuple[str, dict]:
        """A fast window: a move starts, from the plateau, the one just left, or the calm level."""
        lp = self.last_plateau
        on_plateau = self.plateau is not None
        drifting = (  # a slow escape from a plateau is the start of this move
            lp is not None
            and lp["reason"] == "drift"
            and lp["sign"] == sign
            and (self.last_move_end is None or self.last_move_end < lp["end"])
        )
        if self.plateau is not None:
            base = self.plateau["sum"] / self.plateau["count"]
            start = self._departure(base, sign, self.plateau["start"], kappa)
        elif lp is not None and not lp["used"] and (self.n - lp["n"] <= self.W or drifting):
            base, start = lp["level"], lp["end"]  # leaving the plateau that just ended
            lp["used"] = True
        elif self.calm is not None:
            base = self.calm["level"]
            start = self._departure(base, sign, self.calm["t_first"], kappa)
        else:  # fast from the first window on: the move left the first log's level
            ts, ys = self.window_points()
            base = ys[0]
            start = self._departure(base, sign, ts[0], kappa)
        self.move = {
            "sign": sign,
            "from": base,
            "start": start,
            "peak": abs(f["delta"]),
            "peak_span": f["span"],
            "steepest": f["tbar"],
            "extreme": f["end"],
            "from_plateau": on_plateau,
            # the slope per step it departs from (none from a plateau that was announced)
            "trend": 0.0 if self._on_plateau() else self.trend_slope,
            "slow": 0,  # consecutive windows slower than the move's continuation bound
        }
        return ("move_start", dict(self.move))

    def _end_move(self, f: dict[str, float], kappa: float, settled: tuple | None = None) -> list:
        """The move is over: its end level and step, the plateau it ended or the one it starts.

        ``settled`` (end, level) comes from :meth:`_settled`: the new level has held for half a
        window, so a plateau opens there at once; otherwise the move merely slowed down.
        """
        mv = self.move
        assert mv is not None
        if settled is not None:
            end, to = settled
        else:
            ts, ys = self.points(max(self.W // 2, 2))
            to = sum(ys) / len(ys)
            h = 4.0 * max(kappa, f["sigma"])
            end = self._arrival(to, -mv["sign"], mv["steepest"], kappa, h)
        out: list = []
        p = self.plateau
        if p is not None and abs(to - p["sum"] / p["count"]) >= self._tol(self.min_move, to):
            reason = "rise" if mv["sign"] > 0 else "cliff"
            out.extend(self._end_plateau(mv["sign"], kappa, reason))
        mv["steepest"] = min(max(mv["steepest"], mv["start"]), end)
        self.move = None
        self.last_move_end, self.last_sign = end, mv["sign"]
        self.move_end_n = self.n
        self.base_slope, self.trend_from = None, self.n + 2 * self.W  # a new trend to learn
        self.calm = {"level": to, "t_first": end}  # the next move leaves from here
        out.append(("move_end", {**mv, "to": to, "end": end}))
        if settled is not None and self.plateau is None:
            out.extend(self._open_plateau(end, f))
        return out

    def open_move(self) -> dict[str, Any] | None:
        """The move in progress, with the latest fitted level as its provisional end."""
        if self.move is None:
            return None
        ts, ys = self.points(max(self.W // 2, 2))
        steepest = min(max(self.move["steepest"], self.move["start"]), ts[-1])
        return {**self.move, "to": sum(ys) / len(ys), "end": ts[-1], "steepest": steepest}

    def state_dict(self) -> dict[str, Any]:
        keys = ("n", "t0", "y0", "s", "since", "plateau", "move", "calm", "last_plateau")
        keys += ("noise", "noise_init", "slopes", "t_origin", "h0", "move_end_n", "trend_slope")
        keys += ("base_slope", "trend_from")
        state = {k: _copy(getattr(self, k)) for k in keys}
        state.update(ts=list(self.ts), ys=list(self.ys), unit=self.unit)
        state["last_move_end"], state["last_sign"] = self.last_move_end, self.last_sign
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if len(state["ts"]) != self.C:
            raise ValueError(f"saved ring holds {len(state['ts'])} points, this one {self.C}")
        for k, v in state.items():
            setattr(self, k, _copy(v))
        if self.plateau is not None and "s" not in self.plateau:  # a version 1 state
            self.plateau.update(after_move=True, s=[0.0] * 8)


def _clipped_mean(xs: list[float]) -> float:
    """Mean after clipping at five times the median (a robust start for the noise estimate)."""
    cap = 5.0 * sorted(xs)[len(xs) // 2]
    return sum(min(x, cap) for x in xs) / len(xs)


def _copy(v: Any) -> Any:
    """A deep copy of plain state (dicts, lists, numbers), so saved state never aliases."""
    if isinstance(v, dict):
        return {k: _copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copy(x) for x in v]
    return v
