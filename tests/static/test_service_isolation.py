"""What the workspace members may import, read from their source (no component started).

- Rule 1 of DESIGN: no service imports another service (they talk over Hypha), no library
  imports a service, and no service depends on another.
- Every member declares what it imports: the workspace packages a member's code imports are
  among its declared dependencies (``dependencies`` or an extra), so ``uv sync --package <member>
  --no-dev`` (what its image does) gives it everything it needs. Its tests run in the
  workspace's dev environment and may also use the workspace libraries.
- No member imports another package's private (``_``) modules or names: each library has a
  public API for what others need.
"""

from __future__ import annotations

import ast
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICE_PACKAGES = {"bioengine_cluster", "bioengine_apps", "bioengine_datasets", "bioengine_gateway"}

#: Private imports across packages still to be removed, as (file, module): the local-stack pieces
#: of bioengine_common get a public module on another branch (issue 16, item 5). An entry that no
#: longer matches fails the test, so the list only shrinks.
KNOWN_PRIVATE_IMPORTS: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Member:
    name: str
    path: Path
    packages: frozenset[str]
    declared: frozenset[str]


def _distribution(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;@]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def members() -> list[Member]:
    found = []
    for path in sorted([*ROOT.glob("libs/*"), *ROOT.glob("services/*")]):
        if not (path / "pyproject.toml").is_file():
            continue
        meta = tomllib.loads((path / "pyproject.toml").read_text())
        project = meta["project"]
        wheel = meta["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
        requirements = [*project.get("dependencies", [])]
        for extra in project.get("optional-dependencies", {}).values():
            requirements += extra
        found.append(
            Member(
                name=project["name"],
                path=path,
                packages=frozenset(Path(p).name for p in wheel),
                declared=frozenset(_distribution(r) for r in requirements),
            )
        )
    return found


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports by absolute name, anywhere (inside functions too); for
    ``from a import b`` both ``a`` and ``a.b`` (b may be a module or a name)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names if alias.name != "*"}
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", None) == "__import__"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(str(node.args[0].value))
    return names


def imported_packages(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_modules(path)}


def is_private(module: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in module.split(".")[1:])


def test_the_workspace_is_read():
    found = {m.name: m for m in members()}
    assert len([m for m in found.values() if m.path.parent.name == "services"]) == 4
    assert found["apps-svc"].packages == {"bioengine_apps"}
    assert "bioengine-app-runtime" in found["apps-svc"].declared
    assert "bioengine-datasets-client" in found["bioengine-worker"].declared  # from an extra


def test_no_service_imports_another():
    violations = []
    services = sorted((ROOT / "services").glob("*-svc"))
    assert len(services) == 4
    for service in services:
        own = {p.name for p in (service / "src").iterdir() if p.is_dir()}
        for path in service.rglob("*.py"):
            for package in imported_packages(path) & (SERVICE_PACKAGES - own):
                violations.append(f"{path.relative_to(ROOT)} imports {package}")
    assert not violations, violations


def test_libraries_import_no_service():
    for path in (ROOT / "libs").rglob("*.py"):
        assert not imported_packages(path) & SERVICE_PACKAGES, path


def test_each_service_depends_only_on_libraries():
    for service in (ROOT / "services").glob("*-svc"):
        deps = tomllib.loads((service / "pyproject.toml").read_text())["project"]["dependencies"]
        assert not [d for d in deps if _distribution(d).endswith("-svc")], service


def test_every_member_declares_the_workspace_packages_it_imports():
    all_members = members()
    owner = {package: m for m in all_members for package in m.packages}
    libraries = {m.name for m in all_members if m.path.parent.name == "libs"}
    violations = []
    for member in all_members:
        for path in sorted(member.path.rglob("*.py")):
            relative = path.relative_to(member.path)
            allowed = set(member.declared)
            if relative.parts[0] == "tests":
                allowed |= libraries
            for package in imported_packages(path) & set(owner) - member.packages:
                if owner[package].name not in allowed:
                    violations.append(
                        f"{path.relative_to(ROOT)} imports {package} but {member.name} does not declare "
                        f"{owner[package].name} in {member.path.relative_to(ROOT)}/pyproject.toml"
                    )
    assert not violations, "\n".join(violations)


def test_no_member_imports_another_packages_private_modules():
    all_members = members()
    owner = {package: m for m in all_members for package in m.packages}
    found = set()
    for member in all_members:
        for path in sorted(member.path.rglob("*.py")):
            for module in imported_modules(path):
                package = module.split(".")[0]
                if package in owner and package not in member.packages and is_private(module):
                    found.add((path.relative_to(ROOT).as_posix(), ".".join(module.split(".")[:2])))
    assert not found - KNOWN_PRIVATE_IMPORTS, sorted(found - KNOWN_PRIVATE_IMPORTS)
    assert not KNOWN_PRIVATE_IMPORTS - found, (
        f"gone, remove them from KNOWN_PRIVATE_IMPORTS: {sorted(KNOWN_PRIVATE_IMPORTS - found)}"
    )


def test_the_checker_sees_imports(tmp_path):
    sample = tmp_path / "x.py"
    sample.write_text(
        "import bioengine_apps.x\nfrom bioengine_cluster import a\n__import__('bioengine_gateway')\n"
        "def f():\n    from bioengine_app_runtime._kv import get_json\n"
    )
    assert imported_packages(sample) == {
        "bioengine_apps",
        "bioengine_cluster",
        "bioengine_gateway",
        "bioengine_app_runtime",
    }
    private = {m for m in imported_modules(sample) if is_private(m)}
    assert private == {"bioengine_app_runtime._kv", "bioengine_app_runtime._kv.get_json"}
    assert not is_private("bioengine_app_runtime.kv") and not is_private("bioengine_common.__version__")
