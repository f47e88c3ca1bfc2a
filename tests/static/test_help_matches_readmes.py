"""Every flag a program's `--help` lists is documented: in its own README, or, for the flags
every service shares, in bioengine-common's README; the launcher's cluster options in
cluster-svc's README (they are cluster-svc's, handed on)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bioengine_common.cluster_options import ClusterOptions

ROOT = Path(__file__).resolve().parents[2]
COMMON_README = ROOT / "libs/bioengine-common/README.md"
PROGRAMS = {
    "bioengine_cluster": "services/cluster-svc/README.md",
    "bioengine_apps": "services/apps-svc/README.md",
    "bioengine_datasets": "services/datasets-svc/README.md",
    "bioengine_gateway": "services/gateway-svc/README.md",
    "bioengine_worker": "libs/bioengine-worker/README.md",
}


def _flags(module: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return set(re.findall(r"^\s+(--[a-z0-9][a-z0-9-]*)", out.stdout, re.MULTILINE)) - {"--help"}


def _documented(flag: str, text: str) -> bool:
    return re.search(rf"{re.escape(flag)}(?![a-z0-9-])", text) is not None


def _cluster_flags() -> set[str]:
    return {"--" + name.replace("_", "-") for name in ClusterOptions.model_fields}


@pytest.mark.parametrize(("module", "readme"), sorted(PROGRAMS.items()))
def test_every_flag_in_help_is_in_a_readme(module, readme):
    own = (ROOT / readme).read_text()
    common = COMMON_README.read_text()
    cluster = (ROOT / PROGRAMS["bioengine_cluster"]).read_text()
    missing = []
    flags = _flags(module)
    for flag in sorted(flags):
        bare = flag.removeprefix("--no-")
        if bare != flag and f"--{bare}" in flags:
            continue  # the negative of a boolean flag: documented with it
        places = [own, common] + ([cluster] if flag in _cluster_flags() else [])
        if not any(_documented(flag, text) for text in places):
            missing.append(flag)
    assert not missing, f"{module} --help lists flags that no README documents: {missing}"


def test_the_checker_sees_flags_and_their_ends():
    assert _documented("--slurm-tag", "| `--slurm-tag` | x |")
    assert not _documented("--slurm", "| `--slurm-tag` | x |")
    assert "--mode" in _cluster_flags() and "--slurm-worker-memory-gb" in _cluster_flags()
