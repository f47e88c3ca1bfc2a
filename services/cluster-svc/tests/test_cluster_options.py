"""The cluster options are declared once (``bioengine_common.cluster_options``): bioengine-cluster's
settings inherit them, and the bioengine-worker launcher's flags are the same options with the same
defaults, constraints and ``--help`` text (compared here through both commands' ``--help``, so no
service test imports the launcher; its forwarding is tested in
libs/bioengine-worker/tests/test_cluster_options.py). Pure."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest
from pydantic import ValidationError

from bioengine_cluster._settings import ClusterSettings
from bioengine_cluster.slurm import JobSpec
from bioengine_common import build_parser
from bioengine_common.cluster_options import CLUSTER_OPTIONS, MIN_WORKER_MEMORY_GB, ClusterOptions


@pytest.mark.parametrize("name", CLUSTER_OPTIONS)
def test_each_setting_is_the_shared_declaration(name):
    shared, field = ClusterOptions.model_fields[name], ClusterSettings.model_fields[name]
    assert field.annotation == shared.annotation
    assert field.get_default(call_default_factory=True) == shared.get_default(call_default_factory=True)
    assert field.description == shared.description and field.description
    assert field.metadata == shared.metadata


def _squeezed(text: str) -> str:
    return re.sub(r"\s+", "", text)  # argparse wraps lines, also after hyphens


def _help(module: str) -> str:
    return _squeezed(
        subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True, timeout=120
        ).stdout
    )


@pytest.mark.skipif(importlib.util.find_spec("bioengine_worker") is None, reason="no bioengine-worker here")
def test_both_commands_show_each_option_with_the_same_help():
    cluster, launcher = _help("bioengine_cluster"), _help("bioengine_worker")
    parser = build_parser(ClusterSettings, prog="bioengine-cluster", description="")
    texts = {a.dest: a.help or "" for a in parser._actions if a.dest in CLUSTER_OPTIONS}
    assert set(texts) == set(CLUSTER_OPTIONS)
    missing = {
        name: where
        for name, text in texts.items()
        for where, output in (("bioengine-cluster", cluster), ("bioengine-worker", launcher))
        # argparse prints '%%' as '%'
        if _squeezed("--" + name.replace("_", "-")) not in output
        or _squeezed(text.replace("%%", "%")) not in output
    }
    assert missing == {}


def test_worker_memory_has_one_lower_bound():
    """Settings and the job spec refuse the same memories (the launcher too, from the same field)."""
    assert ClusterSettings(slurm_worker_memory_gb=MIN_WORKER_MEMORY_GB).slurm_worker_memory_gb == 0.5
    with pytest.raises(ValidationError, match=r"greater than or equal to 0\.5"):
        ClusterSettings(slurm_worker_memory_gb=0.4)
    with pytest.raises(ValidationError, match=r"greater than or equal to 0\.5"):
        JobSpec(memory_gb=0.4)
