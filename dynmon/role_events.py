"""Formation events of head roles: per head, when a role score takes off and when it forms.

For every head and watched role (previous-token, induction, duplicate-token score), two of
``dynmon.events``' public detectors watch the per-head score logged at each ``head_roles`` look:

- ``OnsetDetector`` -> ``role_onset``: the score took off from where it sat (``at`` = start of
  the rise);
- ``SaturationDetector`` at ``threshold`` held for ``hold`` looks -> ``role_formed``: "induction
  head L1.H3 formed at step 1,200 (score 0.62)" (``at`` = first look at or above the threshold).

Each event keeps the detector's fields and adds ``role``, ``head`` (``"L1.H3"``), ``layer`` and
``score``. The state is plain data (``state_dict``), so it travels in a metric snapshot and in
``Monitor.state_dict()`` and a resumed run continues it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from dynmon.events import OnsetConfig, OnsetDetector, SaturationDetector
from dynmon.keys import key

ROLE_NAMES = {
    "prev_token_score": "previous-token",
    "induction_score": "induction",
    "duplicate_token_score": "duplicate-token",
}
TARGET = "attn"  # per-head pattern scores are keyed dynmon/<role>/L1.H3.attn


@dataclass(frozen=True)
class RoleEventConfig:
    """When a head's role score counts as formed, and how a take-off is judged (in looks)."""

    roles: tuple[str, ...] = tuple(ROLE_NAMES)
    threshold: float = 0.4  # a score this high, held for `hold` looks, is a formed role
    hold: int = 2
    onset_window: int = 6  # looks in the onset detector's smoothing window
    min_rise: float = 0.2  # rise above the level left that confirms a take-off

    def __post_init__(self) -> None:
        unknown = set(self.roles) - set(ROLE_NAMES)
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}; choose from {sorted(ROLE_NAMES)}")
        if not 0.0 < self.threshold <= 1.0 or self.hold < 1:
            raise ValueError(
                f"need 0 < threshold <= 1 and hold >= 1, got {self.threshold} and {self.hold}"
            )


class RoleEvents:
    """Onset and formation detectors for every (role, layer, head); see the module docstring."""

    def __init__(self, config: RoleEventConfig | None = None) -> None:
        self.config = config or RoleEventConfig()
        self._onset: dict[str, OnsetDetector] = {}
        self._formed: dict[str, SaturationDetector] = {}

    def _detectors(self, k: str) -> tuple[OnsetDetector, SaturationDetector]:
        c = self.config
        if k not in self._onset:
            onset_cfg = OnsetConfig(window=c.onset_window, min_rise=c.min_rise)
            self._onset[k] = OnsetDetector(k, onset_cfg)
            self._formed[k] = SaturationDetector(k, threshold=c.threshold, hold=c.hold)
        return self._onset[k], self._formed[k]

    def update(self, step: int, scores: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Feed one look's ``{role: [L, H] scores}`` (array-likes); return the completed events."""
        events: list[dict[str, Any]] = []
        for role in self.config.roles:
            if role not in scores:
                continue
            values = scores[role]
            for layer, row in enumerate(values):
                for h, v in enumerate(row):
                    head = f"L{layer}.H{h}"
                    k = key(role, f"{head}.{TARGET}")
                    onset, formed = self._detectors(k)
                    value = {k: float(v)}
                    for ev in onset.update(step, value):
                        events.append(self._word("role_onset", ev, role, head, layer))
                    for ev in formed.update(step, value):
                        events.append(self._word("role_formed", ev, role, head, layer))
        return events

    @staticmethod
    def _word(kind: str, ev: dict[str, Any], role: str, head: str, layer: int) -> dict[str, Any]:
        name = ROLE_NAMES[role]
        score = float(ev["value"])
        if kind == "role_formed":
            msg = f"{name} head {head} formed at step {ev['at']:,} (score {score:.2f})"
        else:
            msg = (
                f"{name} score of head {head} took off at step {ev['at']:,} from "
                f"{float(ev['from']):.2f} (now {score:.2f})"
            )
        return {
            **ev,
            "kind": kind,
            "role": role,
            "head": head,
            "layer": layer,
            "score": score,
            "message": msg,
        }

    def state_dict(self) -> dict[str, Any]:
        """Plain data: the config and every detector's own state."""
        return {
            "config": asdict(self.config),
            "onset": {k: d.state_dict() for k, d in self._onset.items()},
            "formed": {k: d.state_dict() for k, d in self._formed.items()},
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> RoleEvents:
        """The detectors as ``state_dict`` left them."""
        cfg = dict(state["config"])
        cfg["roles"] = tuple(cfg["roles"])
        self = cls(RoleEventConfig(**cfg))
        for k, s in state["onset"].items():
            onset, formed = self._detectors(k)
            onset.load_state_dict(s)
            formed.load_state_dict(state["formed"][k])
        return self
