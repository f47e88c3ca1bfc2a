"""Every workspace member runs with `uv run --package <member>`, from the one lock."""

import subprocess
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ENTRY_POINTS = {
    "cluster-svc": "bioengine-cluster",
    "apps-svc": "bioengine-apps",
    "datasets-svc": "bioengine-datasets",
    "gateway-svc": "bioengine-gateway",
    "bioengine-worker": "bioengine-worker",
}


@pytest.mark.parametrize(("member", "entry"), sorted(ENTRY_POINTS.items()))
def test_uv_run_package_help(member, entry, uv):
    out = subprocess.run(
        [uv, "run", "--frozen", "--package", member, entry, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "--server-url" in out.stdout


def test_common_runs_alone(uv):
    out = subprocess.run(
        [
            uv,
            "run",
            "--frozen",
            "--package",
            "bioengine-common",
            "python",
            "-c",
            "import bioengine_common; print(len(bioengine_common.__all__))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and int(out.stdout) > 10, out.stderr


def test_members_have_the_layout():
    for pyproject in [*ROOT.glob("libs/*/pyproject.toml"), *ROOT.glob("services/*/pyproject.toml")]:
        member = pyproject.parent
        config = tomllib.loads(pyproject.read_text())
        project = config["project"]
        # The package is named after the member (bioengine_<name>), except the SDK: its module is
        # `bioengine`, the public SDK's import name, so that apps written for it run unchanged.
        package = "bioengine_" + member.name.removesuffix("-svc").removeprefix("bioengine-").replace("-", "_")
        if member.name == "bioengine-sdk":
            package = "bioengine"
        assert config["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == [f"src/{package}"], member
        assert (member / "README.md").stat().st_size > 200, member
        assert (member / "src" / package / "__init__.py").exists(), member
        assert list((member / "tests").glob("test_*.py")), member
        assert project["requires-python"] == ">=3.11"
