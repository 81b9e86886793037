"""The HTML page: payload JSON, the page's own script and style inlined, plotly.js (from the plotly
Python package) copied beside it, tables rendered here so that the page reads without scripts."""

from __future__ import annotations

import html
import json
import math
import os
import shutil
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

PLOTLY_JS = "plotly.min.js"


# -- JSON with compact numbers --------------------------------------------------------------------
def _numbers(a: np.ndarray) -> str:
    """A float array as a JSON list: integers exact, other values to 6 significant digits,
    non-finite as ``null`` (a gap in a plotly line)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    finite = np.isfinite(a)
    if finite.all() and np.all(a == np.round(a)) and (np.abs(a) < 1e15).all():
        return "[" + ",".join(map(str, a.astype(np.int64).tolist())) + "]"
    cells = (f"{v:.6g}" if ok else "null" for v, ok in zip(a.tolist(), finite, strict=True))
    return "[" + ",".join(cells) + "]"


def dumps(obj: Any) -> str:
    """JSON of a payload (dicts, lists, numbers, strings, NumPy arrays of any shape)."""
    if isinstance(obj, np.ndarray):
        if obj.ndim <= 1:
            return _numbers(obj)
        return "[" + ",".join(dumps(sub) for sub in obj) + "]"
    if isinstance(obj, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{dumps(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ",".join(dumps(v) for v in obj) + "]"
    if isinstance(obj, (float, np.floating)):
        return f"{float(obj):.10g}" if math.isfinite(obj) else "null"
    if isinstance(obj, (np.integer, np.bool_)):
        return json.dumps(obj.item())
    return json.dumps(obj, default=str)


def script_json(obj: Any) -> str:
    """JSON safe inside ``<script type="application/json">`` (no ``</script>`` can close it)."""
    return dumps(obj).replace("</", "<\\/")


# -- tables ---------------------------------------------------------------------------------------
def fmt(v: Any) -> str:
    """A table cell: short floats, JSON for lists and dicts (long lists cut at 20 items)."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}" if math.isfinite(v) else str(v)
    if isinstance(v, list) and len(v) > 20:
        return json.dumps(v[:20], default=str)[:-1] + f", … ({len(v)} items)]"
    if isinstance(v, (list, dict)):
        return json.dumps(v, default=str)
    return str(v)


def table(head: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    """An HTML table; cells escaped."""
    if not rows:
        return '<p class="empty">none</p>'
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(fmt(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f'<table class="{cls}"><tr>{th}</tr>{body}</table>'


def events_table(events: list[dict[str, Any]], empty: str = "no events detected") -> str:
    """Events where they happened (step), with kind, key, value and message."""
    if not events:
        return f'<p class="empty">{html.escape(empty)}</p>'
    rows = [
        [e.get("step", ""), e.get("kind", ""), e.get("key", ""), e.get("value", e.get("level")),
         e.get("message")]
        for e in events
    ]  # fmt: skip
    return table(["step", "kind", "key", "value", "message"], rows, "events")


# -- the page -------------------------------------------------------------------------------------
def _asset(name: str) -> str:
    return resources.files("dynmon.page").joinpath(name).read_text(encoding="utf-8")


def plotly_source() -> Path:
    """plotly.min.js as shipped inside the plotly Python package (no CDN, works offline)."""
    try:
        import plotly
    except ImportError as exc:  # pragma: no cover - plotly is a core dependency
        raise ImportError(
            "dynmon's report page needs the plotly package (pip install plotly)"
        ) from exc
    path = Path(plotly.__file__).parent / "package_data" / PLOTLY_JS
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall plotly (pip install -U plotly)")
    return path


def copy_plotly(out: Path) -> Path:
    """Put plotly.min.js beside the page (copied once; replaced when plotly was upgraded)."""
    src = plotly_source()
    dst = out / PLOTLY_JS
    if not dst.is_file() or dst.stat().st_size != src.stat().st_size:
        tmp = dst.with_name(f".{PLOTLY_JS}.{os.getpid()}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    return dst


def write_atomic(path: Path, text: str) -> None:
    """Write so that a browser reloading the page sees the old or the new one, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def page(
    title: str,
    subtitle: str,
    payload: dict[str, Any],
    sections: Sequence[tuple[str, str, str]],
    refresh: float | None = None,
) -> str:
    """The page: a header, the plot sections the script fills, then ``sections`` (id, heading,
    HTML) after the plots. ``refresh`` (seconds) makes the browser reload it (``--watch``)."""
    meta = f'<meta http-equiv="refresh" content="{refresh:g}">' if refresh else ""
    plots = [
        ("curves", "Learning curves"),
        ("circuits", "Circuits: rank and subspace distance per layer and head"),
        ("heatmaps", "Per-head heatmaps"),
        ("curvature", "Curvature"),
        ("other", "Other monitor scalars"),
    ]
    present = {p.get("section") for p in payload["panels"]}
    if payload.get("heatmaps"):
        present.add("heatmaps")
    plot_html = "".join(
        f'<section id="{sid}"><h2>{html.escape(head)}</h2><div class="plots"></div></section>'
        for sid, head in plots
        if sid in present
    )
    nav = [(sid, head.split(":")[0]) for sid, head in plots if sid in present]
    nav += [(sid, head) for sid, head, _ in sections]
    nav_html = " · ".join(f'<a href="#{sid}">{html.escape(head)}</a>' for sid, head in nav)
    rest = "".join(
        f'<section id="{sid}"><h2>{html.escape(head)}</h2>{body}</section>'
        for sid, head, body in sections
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{meta}
<title>dynmon · {html.escape(title)}</title>
<style>{_asset("page.css")}</style>
<script src="{PLOTLY_JS}"></script>
</head><body>
<header><h1>{html.escape(title)}</h1><p class="sub">{subtitle}</p><nav>{nav_html}</nav></header>
<noscript><p class="warn">The plots need JavaScript; the tables read without it.</p></noscript>
{plot_html}
{rest}
<script type="application/json" id="dynmon-data">{script_json(payload)}</script>
<script>{_asset("page.js")}</script>
</body></html>
"""
