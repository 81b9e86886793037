"""The W&B dashboard: built offline, its panels checked against the keys a real offline run logs."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import tiny_tl

pytest.importorskip("wandb_workspaces")
pytest.importorskip("wandb")

from dynmon.integrations.wandb_dashboard import (  # noqa: E402
    STEP_KEY,
    build_workspace,
    dashboard_spec,
)

from dynmon.cli import main, wandb_group  # noqa: E402
from dynmon.keys import head_scalars  # noqa: E402

WANDB_INTERNAL = {"_runtime", "_step", "_timestamp", "_wandb"}


@pytest.fixture(scope="module")
def logged_keys(tmp_path_factory) -> set[str]:
    """Every key a real Monitor run (all metric families, curvature, an event) sends to an
    offline W&B run, read back from the run's summary."""
    import dynmon
    from dynmon.analyze import final_distance_metric
    from dynmon.metrics.table import head_factors
    from dynmon.sinks.wandb import WandbSink

    tmp = tmp_path_factory.mktemp("wb")
    model = tiny_tl(d_vocab=12)
    x = torch.randint(0, 12, (4, 8), generator=torch.Generator().manual_seed(0))  # [B, T]

    def loss_fn(m, batch):
        logits = m(batch)  # [B, T, V]
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, 12), batch[:, 1:].reshape(-1)
        )

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    final = {c: (A.clone(), B.clone()) for c, (A, B) in head_factors(dynmon.heads(model)).items()}
    sink = WandbSink(project="dynmon-test", mode="offline", dir=tmp / "wandb")
    metrics = {
        "full": None,
        "sharpness": None,
        "hessian_trace": None,
        "esd_alpha": None,
        "grad_noise": None,
        "llc": None,
        "head_roles": None,
        final_distance_metric(final): None,  # what `dynmon analyze` adds
    }
    mon = dynmon.Monitor(
        model,
        run_dir=tmp / "run",
        schedule=dynmon.every(2),
        metrics=metrics,
        sinks=["local", sink],
        loss_fn=loss_fn,
        probe_batch=x,
        optimizer=opt,
        options={"autocorr_window": 4, "norm_window": 3, "k": 2, "llc_chains": 2, "llc_draws": 4},
        strict=True,
    )
    for step in range(7):
        loss = loss_fn(model, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step(step, loss=loss, **{"test/acc": 0.1 * step})
    mon.log_event("cliff", 3, key="loss", message="a test event")
    keys = set(sink.run.summary.keys()) - WANDB_INTERNAL
    mon.close()
    return keys


def _panels():
    return [p for s in dashboard_spec() for p in s.panels]


def _covered(key: str) -> bool:
    for p in _panels():
        if p.kind == "line" and re.search(p.regex, key):
            return True
        if p.kind != "line" and key in p.keys:
            return True
    return False


def test_every_panel_shows_a_key_the_monitor_logs(logged_keys):
    assert len(logged_keys) > 50  # the run really logged every family
    for p in _panels():
        if p.kind == "line":
            hits = [k for k in logged_keys if re.search(p.regex, k)]
            assert hits, f"panel {p.title!r}: {p.regex} matches none of the logged keys"
        else:
            missing = set(p.keys) - logged_keys
            assert not missing, f"panel {p.title!r} reads keys never logged: {missing}"


def test_every_logged_key_is_on_some_panel(logged_keys):
    uncovered = sorted(k for k in logged_keys - {STEP_KEY} if not _covered(k))
    assert not uncovered


def test_regexes_tell_circuits_layers_and_parameters_apart():
    line = [p for p in _panels() if p.kind == "line"]
    keys = head_scalars("erank", torch.zeros(2, 3), "QK")  # per head, per layer, overall

    def titles(k: str) -> list[str]:
        return [p.title for p in line if re.search(p.regex, k)]

    for k in keys:
        if re.search(r"\.H\d+\.", k):
            assert titles(k) == []  # per-head values are heatmaps, not one chart per head
        else:
            assert titles(k) == ["erank"]
    for name in ("blocks.0.attn.W_Q", "embed.weight", "layers.1.out_proj.weight"):
        assert titles(f"dynmon/erank/{name}") == ["rank per matrix"]
    assert titles("dynmon/subspace_dist_final") == ["to the final matrix (dynmon analyze)"]
    assert titles("dynmon/subspace_dist/L1.OV") == ["to the previous look"]
    assert titles("dynmon/esd_alpha/L1") == ["ESD power-law alpha (mean, per layer)"]
    assert titles("dynmon/esd_alpha/blocks.1.attn.q.weight") == ["ESD alpha per matrix"]
    assert titles("dynmon/llc") == ["local learning coefficient (± stderr)"]
    assert titles("train/loss") == ["loss"] and titles("dynmon/loss_autocorr_curv") == [
        "loss autocorrelation curvature"
    ]


def test_workspace_mirrors_the_spec_and_serialises_offline():
    import wandb_workspaces.reports.v2 as wr

    w = build_workspace("someone", "proj", "dyn")
    spec = dashboard_spec()
    assert [s.name for s in w.sections] == [s.name for s in spec]
    for section, s in zip(w.sections, spec, strict=True):
        assert len(section.panels) == len(s.panels)
        for panel, p in zip(section.panels, s.panels, strict=True):
            if p.kind == "line":
                assert isinstance(panel, wr.LinePlot)
                assert panel.metric_regex == p.regex and panel.x == STEP_KEY
            elif p.kind == "media":
                assert isinstance(panel, wr.MediaBrowser) and panel.media_keys == list(p.keys)
            else:
                assert panel.table_name == p.keys[0]
    view = w._to_model().model_dump_json()  # the saved form, built without the network
    for p in _panels():
        if p.regex:
            assert p.regex.replace("\\", "\\\\") in view
    assert w.runset_settings.groupby and "group" in repr(w.runset_settings.groupby).lower()
    with pytest.raises(ValueError, match="entity"):
        build_workspace("", "proj")


def test_cli_builds_without_saving(capsys):
    assert main(["wandb-dashboard", "--entity", "e", "--project", "p", "--no-save"]) == 0
    out = capsys.readouterr().out
    for s in dashboard_spec():
        assert s.name in out
    assert "not saved" in out


def test_seeds_of_one_configuration_share_a_group(tmp_path):
    a = wandb_group("grokking", "quick", ["lr=1e-3", "seed=1"])
    b = wandb_group("grokking", "quick", ["seed=2", "lr = 1e-3"])
    c = wandb_group("grokking", "quick", ["lr=3e-3", "seed=1"])
    assert a == b == "grokking-quick-lr=1e-3" and c != a
    assert wandb_group("demo", "tiny", []) == "demo-tiny"
    # a user's WANDB_RUN_GROUP still reaches the "wandb" sink when no group is passed (`dynmon run
    # --wandb` passes its own explicitly): a fresh process starting the sink must land in it
    code = (
        "import sys; from dynmon.sinks import make_sink; "
        "s = make_sink('wandb', sys.argv[1]); print('GROUP=' + s.run.group); s.close()"
    )
    env = {**os.environ, "WANDB_RUN_GROUP": a, "WANDB_DIR": str(tmp_path), "WANDB_MODE": "offline"}
    res = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert f"GROUP={a}" in res.stdout, res.stderr[-2000:]
