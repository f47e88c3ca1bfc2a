"""The launcher's cluster flags come from ``bioengine_common.cluster_options`` (the declaration
bioengine-cluster's settings inherit too, see services/cluster-svc/tests/test_cluster_options.py):
each option has the shared default, constraints and description, and each one set is handed on
to bioengine-cluster unchanged. Pure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bioengine_common import load_settings
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
    "app_sandbox": "on",
    "app_sandbox_hide": [Path("/data/private")],
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


def _received(flags: list[str]) -> ClusterOptions:
    """What bioengine-cluster reads from these flags (its settings inherit ClusterOptions)."""
    return load_settings(ClusterOptions, flags, prog="bioengine-cluster", description="", environ={})


def test_the_test_sets_every_option():
    assert set(NON_DEFAULT) == set(CLUSTER_OPTIONS)
    defaults = ClusterOptions()
    assert [name for name, value in NON_DEFAULT.items() if getattr(defaults, name) == value] == []


@pytest.mark.parametrize("name", CLUSTER_OPTIONS)
def test_each_flag_is_the_shared_declaration(name):
    shared, field = ClusterOptions.model_fields[name], WorkerSettings.model_fields[name]
    assert field.annotation == shared.annotation
    assert field.get_default(call_default_factory=True) == shared.get_default(call_default_factory=True)
    assert field.description == shared.description and field.description
    assert field.metadata == shared.metadata


def test_every_cluster_option_is_handed_on():
    assert ("mode", *CLUSTER_FLAGS) == CLUSTER_OPTIONS


def test_options_set_arrive_unchanged(tmp_path):
    launcher = Launcher(WorkerSettings(workspace_dir=tmp_path, **NON_DEFAULT))
    argv = ["--mode", launcher.settings.mode, *launcher._cluster_flags()]
    assert "--slurm-gpu-flag=--gpus={gpus}" in argv  # a value starting with '-' is not a flag
    received = _received(argv)
    assert {name: getattr(received, name) for name in CLUSTER_OPTIONS} == NON_DEFAULT


def test_options_left_unset_are_not_handed_on(tmp_path):
    assert Launcher(WorkerSettings(workspace_dir=tmp_path))._cluster_flags() == []
    # Set to the default value on purpose: handed on (it may override a BIOENGINE_* variable).
    launcher = Launcher(WorkerSettings(workspace_dir=tmp_path, slurm_max_workers=4))
    assert launcher._cluster_flags() == ["--slurm-max-workers=4"]


def test_options_from_flags_and_variables_are_handed_on(tmp_path):
    settings = load_settings(
        WorkerSettings,
        ["--workspace-dir", str(tmp_path), "--slurm-partition", "gpu"],
        prog="bioengine-worker",
        description="",
        environ={"BIOENGINE_SLURM_MAX_WORKERS": "2"},
    )
    assert sorted(Launcher(settings)._cluster_flags()) == ["--slurm-max-workers=2", "--slurm-partition=gpu"]


def test_bare_sbatch_options_are_handed_on_as_sbatch_lines(tmp_path):
    launcher = Launcher(WorkerSettings(workspace_dir=tmp_path, slurm_extra_sbatch=["--qos=short"]))
    flags = launcher._cluster_flags()
    assert flags == ["--slurm-extra-sbatch", "#SBATCH --qos=short"]
    assert _received(flags).slurm_extra_sbatch == ["#SBATCH --qos=short"]


def test_worker_memory_below_the_job_minimum_is_refused_at_once():
    """The launcher used to take any memory above 0 and bioengine-cluster then refused below 0.5 GB
    (restarted by the supervisor, refused again); now the launcher refuses it itself."""
    assert WorkerSettings(slurm_worker_memory_gb=MIN_WORKER_MEMORY_GB).slurm_worker_memory_gb == 0.5
    with pytest.raises(ValidationError, match=r"greater than or equal to 0\.5"):
        WorkerSettings(slurm_worker_memory_gb=0.4)
