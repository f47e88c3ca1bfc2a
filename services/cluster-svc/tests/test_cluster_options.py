"""The cluster options are declared once (``bioengine_common.cluster_options``): bioengine-cluster's
settings and the bioengine-worker launcher's flags cover the same options with the same defaults,
constraints and ``--help`` text, and the launcher hands each one set on unchanged. Pure."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bioengine_cluster._settings import ClusterSettings
from bioengine_cluster.slurm import JobSpec
from bioengine_common import build_parser, load_settings
from bioengine_common.cluster_options import CLUSTER_OPTIONS, MIN_WORKER_MEMORY_GB, ClusterOptions
from bioengine_worker._launcher import CLUSTER_FLAGS, Launcher, WorkerSettings

#: A value other than the default for every cluster option.
NON_DEFAULT: dict[str, Any] = {
    "mode": "slurm",
    "head_address": "10.1.2.3",
    "ray_token_file": Path("/shared/ray/auth_token"),
    "head_num_cpus": 2.0,
    "head_num_gpus": 1.0,
    "head_memory_in_gb": 8.0,
    "object_store_memory_in_gb": 2.0,
    "run_code_caller_check": 2.0,
    "run_code_caller_grace": 30.0,
    "slurm_worker_cpus": 4,
    "slurm_worker_memory_gb": 0.5,
    "slurm_worker_gpus": 1,
    "slurm_gpu_flag": "--gpus={gpus}",
    "slurm_time_limit": "1-00:00:00",
    "slurm_partition": "gpu",
    "slurm_account": "lab",
    "slurm_extra_sbatch": ["#SBATCH --qos=short", "#SBATCH --constraint=a100"],
    "slurm_prologue": "module load cuda\nexport X='a b'",
    "slurm_image": "/images/ray.sif",
    "slurm_binds": ["/data:/data", "/scratch"],
    "slurm_ray_executable": "/opt/ray/bin/ray",
    "slurm_min_workers": 1,
    "slurm_max_workers": 8,
    "slurm_idle_timeout": 60.0,
    "slurm_pending_timeout": 120.0,
    "slurm_join_timeout": 90.0,
    "slurm_backoff": 3.0,
    "slurm_backoff_max": 30.0,
    "slurm_tag": "lab-gpu",
    "slurm_poll_interval": 2.0,
}


def _help_texts(model: type) -> dict[str, str]:
    parser = build_parser(model, prog="x", description="")
    return {action.dest: action.help or "" for action in parser._actions if action.dest in CLUSTER_OPTIONS}


def test_the_test_sets_every_option():
    assert set(NON_DEFAULT) == set(CLUSTER_OPTIONS)
    defaults = ClusterOptions()
    assert [name for name, value in NON_DEFAULT.items() if getattr(defaults, name) == value] == []


@pytest.mark.parametrize("name", CLUSTER_OPTIONS)
def test_both_take_each_option_from_the_shared_declaration(name):
    shared = ClusterOptions.model_fields[name]
    for model in (ClusterSettings, WorkerSettings):
        field = model.model_fields[name]
        assert field.annotation == shared.annotation, model
        assert field.get_default(call_default_factory=True) == shared.get_default(call_default_factory=True)
        assert field.description == shared.description and field.description
        assert field.metadata == shared.metadata, model


def test_the_launcher_hands_on_every_cluster_option():
    assert ("mode", *CLUSTER_FLAGS) == CLUSTER_OPTIONS
    assert set(CLUSTER_OPTIONS) <= set(WorkerSettings.model_fields)
    assert set(CLUSTER_OPTIONS) <= set(ClusterSettings.model_fields)


def test_help_shows_the_same_text_for_each_option():
    cluster, launcher = _help_texts(ClusterSettings), _help_texts(WorkerSettings)
    assert set(cluster) == set(launcher) == set(CLUSTER_OPTIONS)
    assert {n: t for n, t in launcher.items() if cluster[n] != t} == {}


def test_both_help_commands_work_and_agree():
    def run(module: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True, timeout=120
        ).stdout
        return re.sub(r"\s+", "", out)  # argparse wraps lines, also after hyphens

    cluster, launcher = run("bioengine_cluster"), run("bioengine_worker")
    for name in ("slurm_worker_memory_gb", "slurm_backoff", "head_address"):
        text = re.sub(r"\s+", "", ClusterOptions.model_fields[name].description or "")
        flag = "--" + name.replace("_", "-")
        assert flag in cluster and flag in launcher
        assert text in cluster and text in launcher, name


def test_options_set_in_the_launcher_arrive_unchanged_in_bioengine_cluster(tmp_path):
    launcher = Launcher(WorkerSettings(workspace_dir=tmp_path, **NON_DEFAULT))
    argv = ["--mode", launcher.settings.mode, *launcher._cluster_flags()]
    assert "--slurm-gpu-flag=--gpus={gpus}" in argv  # a value starting with '-' is not a flag
    received = load_settings(ClusterSettings, argv, prog="bioengine-cluster", description="", environ={})
    assert {name: getattr(received, name) for name in CLUSTER_OPTIONS} == NON_DEFAULT


def test_options_left_unset_are_not_handed_on(tmp_path):
    launcher = Launcher(WorkerSettings(workspace_dir=tmp_path))
    assert launcher._cluster_flags() == []
    # Set to the default value on purpose: handed on (it may override a BIOENGINE_* variable).
    launcher = Launcher(WorkerSettings(workspace_dir=tmp_path, slurm_max_workers=4))
    assert launcher._cluster_flags() == ["--slurm-max-workers=4"]


def test_bare_sbatch_options_are_handed_on_as_sbatch_lines(tmp_path):
    launcher = Launcher(WorkerSettings(workspace_dir=tmp_path, slurm_extra_sbatch=["--qos=short"]))
    flags = launcher._cluster_flags()
    assert flags == ["--slurm-extra-sbatch", "#SBATCH --qos=short"]
    received = load_settings(ClusterSettings, flags, prog="bioengine-cluster", description="", environ={})
    assert received.slurm_extra_sbatch == ["#SBATCH --qos=short"]


@pytest.mark.parametrize("model", [ClusterSettings, WorkerSettings])
def test_worker_memory_has_one_lower_bound(model):
    """The drift this module ended: the launcher took any memory above 0, bioengine-cluster and the
    job spec at least 0.5 GB; now all three refuse the same values."""
    assert model(slurm_worker_memory_gb=MIN_WORKER_MEMORY_GB).slurm_worker_memory_gb == 0.5
    with pytest.raises(ValidationError, match=r"greater than or equal to 0\.5"):
        model(slurm_worker_memory_gb=0.4)
    with pytest.raises(ValidationError, match=r"greater than or equal to 0\.5"):
        JobSpec(memory_gb=0.4)
