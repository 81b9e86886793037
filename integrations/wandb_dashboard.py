"""A W&B workspace for dynmon runs: loss and events, spectra, subspace distance, curvature, norms.

``dashboard_spec()`` is the layout as plain data (sections of panels, each a regex over the keys
the monitor writes, a list of heatmap image keys, or a table); ``build_workspace`` turns it into a
``wandb_workspaces`` ``Workspace`` without touching the network; only ``Workspace.save()`` (the
``dynmon wandb-dashboard`` command) needs network and an API key. Runs are grouped by their W&B
group, so the seeds of one pack preset (``dynmon run --wandb`` sets the group) draw together.

Keys (``dynmon.sinks.wandb``): scalars ``dynmon/<metric>/<target>`` on the ``dynmon/step`` axis,
layer means ``L0.QK`` and overall means ``QK`` as lines (per-head values as one heatmap image per
metric, ``dynmon/heatmap/<metric>/<circuit>``), events as the table ``dynmon/events``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from dynmon.keys import EVENTS_KEY, STEP_KEY, heatmap_key, key

CIRCUITS = ("QK", "OV")
RANK_METRICS = ("erank", "stable_rank", "participation_ratio", "numerical_rank", "marginal_erank")
SUBSPACE_METRICS = ("subspace_dist", "subspace_dist_ref", "subspace_dist_final")
CIRCUIT_TARGET = r"(/(L\d+\.)?(QK|OV))"  # overall or per-layer mean of one circuit


@dataclass(frozen=True)
class Panel:
    """One panel: ``line`` charts every key matching ``regex``; ``media`` shows the image keys;
    ``table`` shows a logged table."""

    title: str
    kind: Literal["line", "media", "table"]
    regex: str | None = None
    keys: tuple[str, ...] = ()
    log_y: bool = False


@dataclass(frozen=True)
class SectionSpec:
    """A named group of panels."""

    name: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


def _circuit_line(metric: str, title: str) -> Panel:
    return Panel(title, "line", rf"^dynmon/{metric}{CIRCUIT_TARGET}$")


def _heatmaps(metric: str, title: str) -> Panel:
    return Panel(title, "media", keys=tuple(heatmap_key(key(metric, c)) for c in CIRCUITS))


def dashboard_spec() -> tuple[SectionSpec, ...]:
    """The workspace layout as plain data: what every section shows and which keys it reads."""
    return (
        SectionSpec(
            "Loss and events",
            (
                Panel("loss", "line", r"(^|/)loss$", log_y=True),
                Panel("accuracy", "line", r"(^|/)acc(uracy)?$"),
                Panel("events", "table", keys=(EVENTS_KEY,)),
                Panel("loss autocorrelation curvature", "line", r"^dynmon/loss_autocorr_curv$"),
                Panel("parameter-norm curvature", "line", r"^dynmon/norm_curvature$"),
            ),
        ),
        SectionSpec(
            "Spectra",
            (
                *(_circuit_line(m, m.replace("_", " ")) for m in RANK_METRICS),
                _heatmaps("svdvals", "singular values per head (heatmaps)"),
                *(_heatmaps(m, f"{m.replace('_', ' ')} per head") for m in RANK_METRICS),
            ),
        ),
        SectionSpec(
            "Subspace distance",
            (
                _circuit_line("subspace_dist", "to the previous look"),
                _circuit_line("subspace_dist_ref", "to the reference look"),
                Panel(
                    "to the final matrix (dynmon analyze)",
                    "line",
                    rf"^dynmon/subspace_dist_final{CIRCUIT_TARGET}?$",
                ),
                Panel("subspace size k", "line", r"^dynmon/subspace_k/(QK|OV)$"),
                *(_heatmaps(m, f"{m.replace('_', ' ')} per head") for m in SUBSPACE_METRICS),
            ),
        ),
        SectionSpec(
            "Curvature",
            (
                Panel("sharpness (top Hessian eigenvalue)", "line", r"^dynmon/sharpness(/.+)?$"),
                Panel("Hessian eigenvalues", "line", r"^dynmon/hessian_eig/\d+$"),
                Panel("Hessian trace", "line", r"^dynmon/hessian_trace(_stderr)?$"),
                Panel("edge of stability (sharpness x lr)", "line", r"^dynmon/eos/.+$"),
            ),
        ),
        SectionSpec(
            "Norms and weights",
            (
                Panel("weight and gradient norm", "line", r"^dynmon/(weight_norm|grad_norm)$"),
                Panel("update ratio", "line", r"^dynmon/update_ratio(/.+)?$", log_y=True),
                Panel("norm per matrix", "line", r"^dynmon/norm/.+$"),
                Panel("gradient norm per matrix", "line", r"^dynmon/grad_norm/.+$"),
                # parameter names hold lower case or "_"; circuit targets (L0.H1.QK) never do
                Panel("rank per matrix", "line", r"^dynmon/(erank|stable_rank)/[^/]*[a-z_][^/]*$"),
            ),
        ),
        _head_roles_section(),
        _tails_noise_llc_section(),
    )


# -- heavy tails, gradient noise, LLC (esd_alpha, grad_noise, llc) ------------------------------


def _tails_noise_llc_section() -> SectionSpec:
    """Power-law alpha of the weights' eigenvalue densities, the gradient-noise scale and SNR,
    and the local learning coefficient: the measures WeightWatcher, Cockpit and devinterp give."""
    return SectionSpec(
        "Heavy tails, gradient noise, LLC",
        (
            Panel("ESD power-law alpha (mean, per layer)", "line", r"^dynmon/esd_alpha(/L\d+)?$"),
            # parameter names hold lower case or "_"; layer means (L0) never do
            Panel("ESD alpha per matrix", "line", r"^dynmon/esd_alpha/[^/]*[a-z_][^/]*$"),
            Panel("ESD fit: KS distance, tail size", "line", r"^dynmon/esd_(ks|spikes)/.+$"),
            Panel("matrices with alpha < 2 / > 6", "line", r"^dynmon/esd_flags/.+$"),
            Panel(
                "gradient noise scale B_simple",
                "line",
                r"^dynmon/grad_noise/b_simple(_unbiased)?$",
                log_y=True,
            ),
            Panel("gradient signal-to-noise ratio", "line", r"^dynmon/grad_noise/snr$"),
            Panel(
                "gradient noise: tr Σ and |G|²",
                "line",
                r"^dynmon/grad_noise/(trace_cov|grad_sq_norm)$",
                log_y=True,
            ),
            Panel("local learning coefficient (± stderr)", "line", r"^dynmon/llc(/stderr)?$"),
            Panel("LLC drift and loss at the weights", "line", r"^dynmon/llc/(drift|init_loss)$"),
        ),
    )


# -- head roles (the head_roles metric) -----------------------------------------------------------
ROLE_SCORES = ("induction_score", "prev_token_score", "duplicate_token_score", "copying_score")


def _head_roles_section() -> SectionSpec:
    """Which heads become previous-token, induction, duplicate-token and copying heads, and when:
    the best head and the layer means as lines, every head as one heatmap per look; formation
    events are rows of the ``dynmon/events`` table (kinds ``role_onset``, ``role_formed``)."""
    return SectionSpec(
        "Head roles",
        (
            Panel("best head per role", "line", rf"^dynmon/({'|'.join(ROLE_SCORES)})_max$"),
            *(
                Panel(
                    f"{m.replace('_', ' ')} per layer",
                    "line",
                    rf"^dynmon/{m}/(L\d+\.)?{'OV' if m == 'copying_score' else 'attn'}$",
                )
                for m in ROLE_SCORES
            ),
            Panel("in-context score (repeated − first-occurrence loss)", "line", r"^dynmon/icl_"),
            Panel(
                "attention entropy and sink mass",
                "line",
                r"^dynmon/(attn_entropy|sink_mass)/(L\d+\.)?attn$",
            ),
            Panel(
                "role scores per head (heatmaps)",
                "media",
                keys=tuple(
                    heatmap_key(key(m, "OV" if m == "copying_score" else "attn"))
                    for m in (*ROLE_SCORES, "attn_entropy", "sink_mass")
                ),
            ),
        ),
    )


def _import_workspaces() -> tuple[Any, Any]:
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
    except ImportError as exc:
        raise ImportError(
            "dynmon wandb-dashboard needs wandb-workspaces: pip install 'dynmon[wandb]' "
            "(or pip install wandb-workspaces)"
        ) from exc
    return ws, wr


def _panel(p: Panel, wr: Any) -> Any:
    if p.kind == "line":
        return wr.LinePlot(title=p.title, x=STEP_KEY, metric_regex=p.regex, log_y=p.log_y)
    if p.kind == "media":
        return wr.MediaBrowser(title=p.title, media_keys=list(p.keys), gallery_axis="step")
    return wr.WeavePanelSummaryTable(table_name=p.keys[0])


def build_workspace(entity: str, project: str, name: str = "dynmon") -> Any:
    """The dashboard as a ``wandb_workspaces.workspaces.Workspace`` (built offline; ``.save()``
    publishes it), with runs grouped by their W&B group."""
    if not entity or not project:
        raise ValueError("a W&B workspace needs an entity (user or team) and a project")
    ws, wr = _import_workspaces()
    return ws.Workspace(
        entity=entity,
        project=project,
        name=name,
        sections=[
            ws.Section(name=s.name, panels=[_panel(p, wr) for p in s.panels], is_open=True)
            for s in dashboard_spec()
        ],
        settings=ws.WorkspaceSettings(x_axis=STEP_KEY),
        runset_settings=ws.RunsetSettings(groupby=[ws.Metric("Group")]),
    )


def describe(workspace: Any) -> str:
    """A few lines saying what a built workspace holds (sections, panel titles)."""
    lines = [f"W&B workspace {workspace.name!r} for {workspace.entity}/{workspace.project}:"]
    for section in workspace.sections:
        titles = ", ".join(
            getattr(p, "title", None) or getattr(p, "table_name", type(p).__name__)
            for p in section.panels
        )
        lines.append(f"  {section.name}: {titles}")
    return "\n".join(lines)
