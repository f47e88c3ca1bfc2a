"""Each service starts from its own ``uv sync --package <svc> --no-dev --frozen`` (what its
Apptainer image does), without the workspace's dev group that has every member in it.

Into a fresh environment (``UV_PROJECT_ENVIRONMENT``): ``python -m <package> --help`` runs, and
every module of the package imports, as does every module its code names in an import statement
(those imported lazily inside functions too, e.g. Ray's, and the workspace libraries' own). An
import inside ``try: ... except ImportError`` or ``if TYPE_CHECKING:`` is optional and skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {
    "apps-svc": "bioengine_apps",
    "cluster-svc": "bioengine_cluster",
    "datasets-svc": "bioengine_datasets",
    "gateway-svc": "bioengine_gateway",
}
WORKSPACE_PACKAGES = (
    "bioengine_common",
    "bioengine_worker",
    "bioengine_datasets_client",
    "bioengine_app_runtime",
    *SERVICES.values(),
)

#: Run by the synced environment's Python: argv[1] the package, argv[2:] the workspace packages
#: whose modules' own imports are checked one level further. Prints what failed to import.
IMPORT_EVERYTHING = r"""
import ast, importlib, importlib.util, pkgutil, sys

package, workspace = sys.argv[1], set(sys.argv[2:])
failures = []

def optional_nodes(tree):
    skip = set()
    for node in ast.walk(tree):
        guarded = isinstance(node, ast.Try) and any(
            handler.type is not None
            and any(
                getattr(n, "id", None) in ("ImportError", "ModuleNotFoundError")
                for n in ast.walk(handler.type)
            )
            for handler in node.handlers
        )
        guarded = guarded or (
            isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        )
        if guarded:
            for child in node.body:
                skip |= {id(n) for n in ast.walk(child)}
    return skip

def imports_of(module_name):
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return []
    with open(spec.origin, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    skip = optional_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.module, alias.name) for alias in node.names if alias.name != "*"]
    return found

def load(module, name=None):
    try:
        loaded = importlib.import_module(module)
        if name is not None and not hasattr(loaded, name):
            importlib.import_module(f"{module}.{name}")
        return True
    except BaseException as exc:
        what = module + (f" ({name})" if name else "")
        failures.append(f"{what}: {type(exc).__name__}: {exc}")
        return False

root = importlib.import_module(package)
own = [package] + [m.name for m in pkgutil.walk_packages(root.__path__, package + ".")]
for module in own:
    load(module)
checked = set()
for module in own:
    for target, name in imports_of(module):
        if (target, name) in checked:
            continue
        checked.add((target, name))
        if load(target, name) and target.split(".")[0] in workspace - {package}:
            # A workspace library's module this service uses: its lazy imports must resolve too.
            for inner, inner_name in imports_of(target if name is None or hasattr(sys.modules[target], name) else f"{target}.{name}"):
                load(inner, inner_name)
print("\n".join(failures))
sys.exit(1 if failures else 0)
"""


@pytest.mark.parametrize(("service", "package"), SERVICES.items())
def test_service_starts_from_its_own_no_dev_sync(service, package, tmp_path, uv):
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["UV_PROJECT_ENVIRONMENT"] = str(venv)
    env["UV_PYTHON"] = f"{sys.version_info.major}.{sys.version_info.minor}"
    sync = subprocess.run(
        [uv, "sync", "--package", service, "--no-dev", "--frozen", "--quiet"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert sync.returncode == 0, sync.stderr
    python = venv / "bin" / "python"
    run_env = {k: v for k, v in env.items() if k != "UV_PROJECT_ENVIRONMENT"}
    # Outside the repository, so nothing of the checkout is importable but what was installed.
    helped = subprocess.run(
        [python, "-m", package, "--help"],
        cwd=tmp_path,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert helped.returncode == 0, helped.stderr
    assert "usage:" in helped.stdout
    imported = subprocess.run(
        [python, "-c", IMPORT_EVERYTHING, package, *WORKSPACE_PACKAGES],
        cwd=tmp_path,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert imported.returncode == 0, (
        f"{service} lacks modules it imports:\n{imported.stdout}{imported.stderr}"
    )
