"""Rule 1 of DESIGN: no service imports another service (they talk over Hypha)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICE_PACKAGES = {"bioengine_cluster", "bioengine_apps", "bioengine_datasets", "bioengine_gateway"}


def imported_packages(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", None) == "__import__"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(str(node.args[0].value).split(".")[0])
    return names


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


def test_the_checker_sees_imports(tmp_path):
    sample = tmp_path / "x.py"
    sample.write_text(
        "import bioengine_apps.x\nfrom bioengine_cluster import a\n__import__('bioengine_gateway')\n"
    )
    assert imported_packages(sample) == {"bioengine_apps", "bioengine_cluster", "bioengine_gateway"}


def test_each_service_depends_only_on_common():
    import tomllib

    for service in (ROOT / "services").glob("*-svc"):
        deps = tomllib.loads((service / "pyproject.toml").read_text())["project"]["dependencies"]
        assert not [d for d in deps if d.split()[0].endswith("-svc")], service
