"""`bioengine apps validate DIR`: both app formats, no server, every problem with file and line,
exit 1 on problems, 0 and one summary line when valid."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from bioengine_worker import cli

APPS = Path(__file__).resolve().parents[3] / "apps"

MANIFEST_06 = """\
format_version: 0.6.0
name: Tiny
id: tiny-06
id_emoji: "🔹"
description: A tiny app.
type: ray-serve
version: "1.0.0"
entry: {entry}
"""

ENTRY_SOURCE = """\
import bioengine


@bioengine.app(num_cpus=1)
class Tiny:
    @bioengine.method
    def ping(self) -> str:
        return "pong"
"""


def write_app(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def validate(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        cli.main(["apps", "validate", *argv])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_a_valid_0_6_0_app_in_a_sub_package(tmp_path, capsys):
    app = write_app(
        tmp_path / "tiny",
        {
            "manifest.yaml": MANIFEST_06.format(entry="pkg.core:Tiny"),
            "pkg/core.py": ENTRY_SOURCE,
            "README.md": "# Tiny\n",
        },
    )
    code, out, _ = validate(capsys, str(app))
    assert code == 0
    assert (
        out
        == f"{app.as_posix()}: valid app 'tiny-06' 1.0.0 (format 0.6.0, entry pkg.core:Tiny); 1 file(s) reach the replicas\n"
    )


def test_the_current_formats_example_apps_are_valid(tmp_path, capsys):
    for name in ("demo-app", "composition-app"):
        code, out, _ = validate(capsys, str(APPS / name))
        assert code == 0 and "(format 0.5.0, deployments " in out and out.count("\n") == 1


def test_every_problem_is_named_with_file_and_line(tmp_path, capsys):
    app = write_app(
        tmp_path / "broken",
        {
            "manifest.yaml": MANIFEST_06.format(entry="demo:app") + "deployments: [demo:App]\n",
            "demo.py": "def broken(:\n",
        },
    )
    code, out, err = validate(capsys, str(app))
    assert code == 1
    assert out.splitlines() == [
        f"{app.as_posix()}/manifest.yaml:9: deployments is the older format's list; format 0.6.0 names one "
        "class instead: remove deployments and set entry: 'module:ClassName' (the class decorated with "
        "@bioengine.app; the classes it composes are found from its __init__ type hints)",
        f"{app.as_posix()}/manifest.yaml:8: entry 'demo:app' must look like 'module.sub:ClassName'",
        f"{app.as_posix()}/demo.py:1: syntax error: invalid syntax",
    ]
    assert err.strip() == f"error: 3 problem(s) in {app}"


def test_source_problems_of_a_0_6_0_app(tmp_path, capsys):
    source = ENTRY_SOURCE.replace("num_cpus=1", "num_gpus=1, gpu_memory_mb=512") + (
        "\n    def check_health(self) -> None:\n        pass\n"
    )
    app = write_app(
        tmp_path / "app", {"manifest.yaml": MANIFEST_06.format(entry="main:Tiny"), "main.py": source}
    )
    code, out, _ = validate(capsys, str(app))
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith(f"{app.as_posix()}/main.py:4: Tiny: @bioengine.app takes gpu_memory_mb")
    assert lines[1].startswith(f"{app.as_posix()}/main.py:10: Tiny.check_health: 'check_health' is a name")


def test_a_missing_entry_module_names_the_manifest_line(tmp_path, capsys):
    app = write_app(tmp_path / "app", {"manifest.yaml": MANIFEST_06.format(entry="pkg.missing:Tiny")})
    code, out, _ = validate(capsys, str(app))
    assert code == 1
    assert out == (
        f"{app.as_posix()}/manifest.yaml:8: entry 'pkg.missing:Tiny': the app has no file 'pkg/missing.py' "
        "(the entry module, a path from the artifact root)\n"
    )


def test_a_broken_current_format_app(tmp_path, capsys):
    app = tmp_path / "demo-app"
    shutil.copytree(APPS / "demo-app", app)
    manifest = (app / "manifest.yaml").read_text().replace("id: demo-app", "id: Demo_App")
    (app / "manifest.yaml").write_text(manifest)
    (app / "demo_app.py").write_text("class DemoApp:\n    pass\n")
    code, out, _ = validate(capsys, str(app))
    assert code == 1
    assert out.splitlines()[0] == (
        f"{app.as_posix()}/manifest.yaml:2: id: 'Demo_App' must be lowercase letters, digits and single "
        "hyphens (no underscores or slashes)"
    )


def test_json_output(tmp_path, capsys):
    app = write_app(
        tmp_path / "app", {"manifest.yaml": MANIFEST_06.format(entry="main:Tiny"), "main.py": ENTRY_SOURCE}
    )
    code, out, _ = validate(capsys, "--json", str(app))
    assert code == 0
    assert json.loads(out) == {
        "valid": True,
        "format_version": "0.6.0",
        "problems": [],
        "replica_files": ["main.py"],
    }
    (app / "main.py").write_text("x = (\n")
    code, out, _ = validate(capsys, "--json", str(app))
    result = json.loads(out)
    assert code == 1 and not result["valid"]
    assert result["problems"][0] == {
        "file": "main.py",
        "line": 1,
        "message": "syntax error: '(' was never closed",
    }


@pytest.mark.parametrize("make", ["missing", "file", "no-manifest"])
def test_a_folder_that_is_no_app_is_a_usage_error(tmp_path, capsys, make):
    target = tmp_path / "app"
    if make == "file":
        target.write_text("x")
    elif make == "no-manifest":
        target.mkdir()
    code, _, err = validate(capsys, str(target))
    assert code == 2 and err.startswith("error: ")
