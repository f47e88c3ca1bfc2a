"""The launcher's start-up report and `bioengine status` under NOT READY (pure parts)."""

import re
import shutil
import subprocess
import sys

import pytest

from bioengine_common import load_settings
from bioengine_common.local_stack import EmbeddedHypha, find_hypha_project
from bioengine_worker._launcher import Progress, WorkerSettings, _seconds, startup_steps
from bioengine_worker.cli.status import format_status


def _status(*, head=None, cluster_ready=False, apps_ready=False, datasets_ready=False, slurm=None):
    ray_cluster = {
        "mode": "slurm" if slurm is not None else "single-machine",
        "head_address": head,
        "ready": cluster_ready,
        "cluster": {"total_cpu": 2.0, "total_gpu": 0.0, "total_memory": 4e9},
        "nodes": {"n1": {}} if cluster_ready else {},
    }
    if slurm is not None:
        ray_cluster["slurm"] = slurm
    return {
        "ray_cluster": ray_cluster,
        "services": {
            "cluster": {"up": True, "status": {"ready": cluster_ready}},
            "apps": {"up": True, "status": {"ready": apps_ready}},
            "datasets": {
                "up": datasets_ready,
                "status": {"ready": datasets_ready} if datasets_ready else None,
            },
        },
    }


def test_startup_steps_follow_the_status_in_order():
    assert startup_steps({}) == []
    assert startup_steps(_status()) == []
    assert [k for k, _ in startup_steps(_status(head="10.0.0.1:6379", datasets_ready=True))] == [
        "ray-head",
        "datasets-ready",
    ]
    steps = dict(startup_steps(_status(head="10.0.0.1:6379", cluster_ready=True, apps_ready=True)))
    assert steps["ray-head"] == "Ray head started at 10.0.0.1:6379"
    assert steps["ray-cluster"] == "Ray cluster ready: 1 node(s), 2 CPUs, 0 GPUs, 4.0 GB memory"
    assert steps["apps-ready"] == "apps-svc connected to the Ray cluster"
    # A service that is down is not a completed step, whatever its last status said.
    down = _status(head="h:1", cluster_ready=True, apps_ready=True)
    down["services"]["apps"]["up"] = False
    assert "apps-ready" not in dict(startup_steps(down))


def test_slurm_ready_without_a_worker_job_says_jobs_start_on_demand():
    steps = dict(startup_steps(_status(head="h:1", cluster_ready=True, slurm={"live_jobs": 0})))
    assert steps["ray-cluster"].endswith("SLURM worker jobs: 0, more start on demand")


def test_external_cluster_has_no_head_step():
    status = _status(head="ray.example:6379", cluster_ready=True)
    status["ray_cluster"]["mode"] = "external-cluster"
    assert "ray-head" not in dict(startup_steps(status))


def test_progress_prints_each_step_once_with_elapsed_time():
    lines: list[str] = []
    progress = Progress(lines.append, started=0.0)
    progress.step("Ray head started", key="ray-head")
    progress.step("Ray head started", key="ray-head")
    progress.step("another")
    assert len(lines) == 2 and lines[0].endswith("s] Ray head started") and lines[0].startswith("[")


def test_stated_seconds_round_up():
    # The banner's time must never be before the moment readiness was seen.
    assert _seconds(12.01) == "12.1"
    assert _seconds(12.0) == "12.0"
    assert _seconds(0.04) == "0.1"
    assert float(_seconds(7.349)) >= 7.349


def test_format_status_lists_the_reasons_under_not_ready():
    status = {
        "is_ready": False,
        "services": {},
        "not_ready_reasons": [
            "cluster: starting the Ray cluster",
            "apps: not connected to the Ray cluster yet: the Ray cluster is not ready (retrying every 1 s)",
        ],
    }
    lines = format_status(status, "bioengine/bioengine-worker").splitlines()
    assert lines[0].endswith("NOT READY")
    assert lines[1] == "  - cluster: starting the Ray cluster"
    assert lines[2].startswith("  - apps: not connected to the Ray cluster yet")
    ready = format_status({"is_ready": True, "services": {}, "not_ready_reasons": []}, "w")
    assert "ready" in ready.splitlines()[0] and " - " not in ready
    old = format_status({"is_ready": False, "services": {}}, "w")  # a gateway without the field
    assert "does not report reasons" in old


def test_no_wait_and_ready_timeout_flags():
    settings = load_settings(
        WorkerSettings, ["--no-wait", "--ready-timeout", "30"], prog="bioengine-worker", description=""
    )
    assert settings.wait is False and settings.ready_timeout == 30
    assert load_settings(WorkerSettings, [], prog="bioengine-worker", description="").wait is True
    text = subprocess.run(
        [sys.executable, "-m", "bioengine_worker", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--no-wait" in text and "--ready-timeout" in text and "is_ready" in text


@pytest.mark.integration
def test_the_first_install_of_the_server_environment_is_announced(tmp_path):
    """A real `uv sync` of a copy of infra/hypha-server: a line before (with the estimate),
    uv's summary lines (not one per package), a line after with the time; then quiet."""
    project = tmp_path / "hypha-server"
    project.mkdir()
    for name in ("pyproject.toml", "uv.lock"):
        shutil.copy(find_hypha_project() / name, project / name)
    lines: list[str] = []
    hypha = EmbeddedHypha(tmp_path / "state", "ws", project_dir=project, log=lines.append)
    hypha.prepare()
    assert hypha.python.exists()
    assert lines[0].startswith("Installing the embedded Hypha server's environment (first run: about")
    assert any(line.startswith("  uv: Installed ") for line in lines[1:-1]), lines
    assert not any(line.startswith("  uv:  + ") for line in lines), lines
    assert re.fullmatch(r"Installed the embedded Hypha server's environment in [\d.]+ s", lines[-1])
    lines.clear()
    hypha.prepare()
    assert lines == []
