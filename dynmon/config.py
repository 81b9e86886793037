"""Resolve experiment configs: ``--set KEY=VALUE`` overrides parsed by each field's type."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import Any, TypeVar

C = TypeVar("C")


def parse_value(text: str, current: Any, key: str) -> Any:
    """Parse ``text`` as the type of the field's current value (bool, int, float, list, str)."""
    try:
        if isinstance(current, bool):
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if isinstance(current, int):
            number = float(text)
            if number != int(number):
                raise ValueError("expected an integer")
            return int(number)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, (list, tuple)):
            body = text.strip()
            try:
                items = json.loads(body) if body.startswith("[") else body.split(",")
            except json.JSONDecodeError:  # [.4,.3] or [a,b]: not JSON, still a plain list
                items = [t.strip() for t in body.strip("[]").split(",") if t.strip()]
            elem = type(current[0]) if current else None
            if elem in (int, float):
                items = [elem(float(x)) if elem is int else float(x) for x in items]
            return type(current)(items)
        if current is None:
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return text
        return type(current)(text)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"--set {key}={text}: cannot read {text!r} as {type(current).__name__} "
            f"(the field's current value is {current!r}): {exc}"
        ) from None


def apply_overrides(config: C, sets: Iterable[str]) -> C:
    """Return ``config`` (a dataclass) with ``KEY=VALUE`` overrides applied, types checked."""
    fields = {f.name for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    changes: dict[str, Any] = {}
    for item in sets:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        k = k.strip()
        if k not in fields:
            raise ValueError(f"--set {k}: unknown key; this pack's keys are {sorted(fields)}")
        changes[k] = parse_value(v, getattr(config, k), k)
    return dataclasses.replace(config, **changes)  # type: ignore[type-var]
