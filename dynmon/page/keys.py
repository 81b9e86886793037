"""Which logged keys go on which panel of the page: the run's own scalars, per-head metrics (with
their layer means and overall means), curvature and the monitor's other scalars."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from dynmon.keys import HEAD_KEY, is_dynmon_key

LAYER_KEY = re.compile(r"^dynmon/(?P<metric>[^/]+)/L(?P<layer>\d+)\.(?P<circuit>\w+)$")
CURVATURE = re.compile(r"^dynmon/(sharpness|hessian|lambda_max)")
RANK_FIRST = ("erank", "stable_rank", "marginal_erank", "participation_ratio", "numerical_rank")
SUBSPACE_FIRST = ("subspace_dist", "subspace_dist_ref", "subspace_dist_final")


@dataclass
class HeadMetric:
    """The keys of one per-head metric: ``heads[circuit][(layer, head)]``,
    ``layers[circuit][layer]`` and ``overall[circuit]``; ``array[circuit]`` names its ``[L, H]``
    array, if one was logged."""

    metric: str
    heads: dict[str, dict[tuple[int, int], str]] = field(default_factory=dict)
    layers: dict[str, dict[int, str]] = field(default_factory=dict)
    overall: dict[str, str] = field(default_factory=dict)
    array: dict[str, str] = field(default_factory=dict)

    @property
    def circuits(self) -> list[str]:
        """Circuits seen in any form, in the order first seen (QK before OV as logged)."""
        seen: dict[str, None] = {}
        for part in (self.heads, self.layers, self.array, self.overall):
            seen.update(dict.fromkeys(part))
        return list(seen)


@dataclass
class KeyPlan:
    """Logged keys sorted onto the page's panels."""

    user: list[str]
    head_metrics: list[HeadMetric]
    curvature: list[str]
    other: list[str]


def plan_keys(keys: Iterable[str], array_names: Iterable[str] = ()) -> KeyPlan:
    """Sort scalar keys and ``[L, H]`` array names into the page's panels (see ``KeyPlan``)."""
    keys = list(keys)
    found: dict[str, HeadMetric] = {}
    used: set[str] = set()
    for k in keys:
        m = HEAD_KEY.match(k)
        if m:
            hm = found.setdefault(m["metric"], HeadMetric(m["metric"]))
            hm.heads.setdefault(m["circuit"], {})[(int(m["layer"]), int(m["head"]))] = k
            used.add(k)
            continue
        m = LAYER_KEY.match(k)
        if m:
            hm = found.setdefault(m["metric"], HeadMetric(m["metric"]))
            hm.layers.setdefault(m["circuit"], {})[int(m["layer"])] = k
            used.add(k)
    for name in array_names:
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == "dynmon" and parts[1] != "svdvals":
            found.setdefault(parts[1], HeadMetric(parts[1])).array[parts[2]] = name
    for k in keys:
        parts = k.split("/")
        if len(parts) == 3 and parts[1] in found and parts[2] in found[parts[1]].circuits:
            found[parts[1]].overall[parts[2]] = k
            used.add(k)
    order = {m: i for i, m in enumerate(RANK_FIRST + SUBSPACE_FIRST)}
    metrics = sorted(found.values(), key=lambda hm: order.get(hm.metric, len(order)))
    user = [k for k in keys if not is_dynmon_key(k)]
    curvature = [k for k in keys if k not in used and CURVATURE.match(k)]
    taken = used | set(curvature) | set(user)
    other = [k for k in keys if k not in taken]
    return KeyPlan(user=user, head_metrics=metrics, curvature=curvature, other=other)


LOCATION_KEYS = {"run_dir", "out", "out_dir", "output_dir", "logging_dir"}


def is_seed_key(flat_key: str) -> bool:
    """A config key that only picks a seed (``seed``, ``run.seed``, ``data_seed``)."""
    last = flat_key.rsplit(".", 1)[-1].lower()
    return last == "seed" or last.endswith("_seed")


def is_location_key(flat_key: str) -> bool:
    """A config key that only says where the run was written (``dynmon.run_dir``)."""
    return flat_key.rsplit(".", 1)[-1].lower() in LOCATION_KEYS
