"""Static checks of 0.6.0 apps (read with ast, never imported), which files reach the replicas, and
check_app/validate_upload over the example apps of both formats. Pure."""

from __future__ import annotations

import textwrap

import pytest

from bioengine_app_format import (
    FORMAT_05,
    FORMAT_06,
    AppFormatError,
    check_app,
    check_sources_06,
    reaches_replicas,
    replica_files,
    validate_upload,
)


def py(source: str) -> bytes:
    return textwrap.dedent(source).encode()


def messages(problems) -> list[str]:
    return [str(p) for p in problems]


# ---- the example apps ------------------------------------------------------------------------------


def test_the_one_file_app_is_valid(example_06):
    check = check_app(example_06("one-file"))
    assert check.problems == [] and check.format_version == FORMAT_06
    assert check.manifest is not None and check.manifest.entry == "hello:HelloApp"
    assert check.manifest.frontend_entry == "frontend/index.html"
    assert check.replica_files == ["hello.py"]  # README.md, manifest.yaml and frontend/ stay behind


def test_the_multi_file_app_with_a_sub_package_entry_is_valid(example_06):
    files = example_06("multi-file")
    check = check_app(files)
    assert check.problems == []
    assert check.manifest is not None and check.manifest.entry == "pkg.service:EntryApp"
    assert check.replica_files == [
        "pkg/__init__.py",
        "pkg/runtimes/__init__.py",
        "pkg/runtimes/worker.py",
        "pkg/service.py",
        "utils.py",
        "weights.txt",
    ]
    assert validate_upload(files).version == "0.2.0"


def test_the_broken_app_reports_every_source_problem_with_file_and_line(example_06):
    files = example_06("broken")
    files["helper.py"] = b"def helper(:\n    return 1\n"
    assert messages(check_app(files).problems) == [
        "helper.py:1: syntax error: invalid syntax",
        "main.py:4: BrokenApp: @bioengine.app takes gpu_memory_mb (newer SDKs) or num_gpus (older SDKs), "
        "not both",
        "main.py:6: BrokenApp.check_health: 'check_health' is a name the bioengine SDK reserves; rename the "
        "method (mark lifecycle hooks with @bioengine.async_init, @bioengine.smoke_test or "
        "@bioengine.health_check)",
        "main.py:14: BrokenApp.second: a second @bioengine.smoke_test hook ('first' at line 10 is one "
        "already); a class has at most one",
        "main.py:17: BrokenApp.async_init: 'async_init' is a name the bioengine SDK reserves; rename the "
        "method (mark lifecycle hooks with @bioengine.async_init, @bioengine.smoke_test or "
        "@bioengine.health_check)",
    ]
    with pytest.raises(AppFormatError, match=r"^helper\.py:1: syntax error"):
        validate_upload(files)


def test_the_current_formats_apps_pass_and_upload_does_not_analyze_their_code(read_app):
    for name in ("demo-app", "composition-app"):
        check = check_app(read_app(name))
        assert check.problems == [] and check.format_version == FORMAT_05 and check.replica_files is None
    files = read_app("demo-app")
    files["demo_app.py"] = b"class DemoApp:\n    pass\n"  # not a deployment: found at deploy, as before
    assert validate_upload(files).deployments == ("demo_app:DemoApp",)
    assert messages(check_app(files).problems) == [
        "demo_app.py:1: demo_app:DemoApp: class 'DemoApp' is not decorated with @serve.deployment",
        "demo_app.py:1: DemoApp: the entry deployment has no @schema_method methods to expose",
    ]
    files["demo_app.py"] = b"x = 1\n"
    assert messages(check_app(files).problems) == [
        "manifest.yaml:12: demo_app:DemoApp: 'demo_app.py' defines no class 'DemoApp'"
    ]


def test_current_format_problems_get_files_and_lines_and_kwargs_wait_for_deploy(read_app):
    files = read_app("composition-app")
    files["deployment_1.py"] = b"x = (\n"
    problems = messages(check_app(files).problems)
    assert problems == ["deployment_1.py:1: syntax error: '(' was never closed"]
    # Deployment2 needs start_number at deploy time: not a problem of the folder.
    assert "start_number" in read_app("composition-app")["deployment_2.py"].decode()


# ---- the entry ------------------------------------------------------------------------------------

APP = """
import bioengine

@bioengine.app
class Entry:
    @bioengine.method
    def ping(self) -> str:
        return "pong"
"""


def test_the_entry_module_is_a_path_from_the_artifact_root():
    assert check_sources_06({"a/b/c.py": py(APP)}, "a.b.c:Entry") == []
    assert check_sources_06({"a/b/c/__init__.py": py(APP)}, "a.b.c:Entry") == []
    assert messages(check_sources_06({"c.py": py(APP)}, "a.b.c:Entry", entry_line=8)) == [
        "manifest.yaml:8: entry 'a.b.c:Entry': the app has no file 'a/b/c.py' (the entry module, a path "
        "from the artifact root)"
    ]


def test_the_entry_class_must_exist():
    assert messages(check_sources_06({"m.py": py(APP)}, "m:Other")) == [
        "m.py: defines no class 'Other' (the entry 'm:Other' of manifest.yaml)"
    ]


def test_an_entry_class_imported_from_another_file_is_followed():
    files = {"m.py": b"from impl.core import Entry\n", "impl/core.py": py(APP)}
    assert check_sources_06(files, "m:Entry") == []
    files = {"m.py": b"from .core import Entry\n", "core.py": py(APP)}
    assert check_sources_06(files, "m:Entry") == []
    files = {"m.py": b"from elsewhere import Entry\n"}
    assert messages(check_sources_06(files, "m:Entry")) == [
        "m.py: imports 'Entry' from 'elsewhere', which is not a file of the app (the entry 'm:Entry' of "
        "manifest.yaml)"
    ]


@pytest.mark.parametrize(
    ("imports", "decorator"),
    [
        ("import bioengine", "@bioengine.app"),
        ("import bioengine", "@bioengine.app(num_cpus=2)"),
        ("import bioengine as be", "@be.app()"),
        ("from bioengine import app", "@app(memory_mb=512)"),
        ("from bioengine import app as deploy", "@deploy"),
    ],
)
def test_the_entry_class_is_decorated_with_bioengine_app(imports, decorator):
    source = f"{imports}\n\n{decorator}\nclass Entry:\n    pass\n"
    assert check_sources_06({"m.py": source.encode()}, "m:Entry") == []


@pytest.mark.parametrize(
    ("imports", "decorator"),
    [
        ("", ""),
        ("from ray import serve", "@serve.deployment"),
        ("import other as bioengine_like", "@bioengine_like.app"),
        ("from mylib import app", "@app"),
    ],
)
def test_an_entry_class_without_bioengine_app_is_named(imports, decorator):
    source = f"{imports}\n\n{decorator}\nclass Entry:\n    pass\n"
    line = source.splitlines().index("class Entry:") + 1
    assert messages(check_sources_06({"m.py": source.encode()}, "m:Entry")) == [
        f"m.py:{line}: class 'Entry' (the entry of manifest.yaml) is not decorated with @bioengine.app"
    ]


# ---- the classes ----------------------------------------------------------------------------------


def test_num_gpus_alone_and_gpu_memory_mb_alone_are_fine():
    for option in ("num_gpus=0", "gpu_memory_mb=1024", "gpu_memory_mb=-1"):
        source = f"import bioengine\n\n@bioengine.app({option})\nclass Entry:\n    pass\n"
        assert check_sources_06({"m.py": source.encode()}, "m:Entry") == []


def test_checks_cover_every_app_class_of_the_app_not_only_the_entry():
    other = """
    from bioengine import app, health_check

    @app
    class Helper:
        @health_check
        def a(self): ...

        @health_check()
        def b(self): ...

        def bioengine_runtime_version(self): ...
    """
    problems = messages(check_sources_06({"m.py": py(APP), "sub/helper.py": py(other)}, "m:Entry"))
    assert [p.split(":")[0:2] for p in problems] == [["sub/helper.py", "10"], ["sub/helper.py", "12"]]
    assert "a second @bioengine.health_check hook ('a' at line 7" in problems[0]
    assert "Helper.bioengine_runtime_version: 'bioengine_runtime_version' is a name" in problems[1]


def test_hooks_with_any_name_and_the_async_init_hook_named_async_init_are_fine():
    source = """
    import bioengine

    @bioengine.app
    class Entry:
        @bioengine.async_init
        async def async_init(self): ...

        @bioengine.smoke_test
        def smoke(self): ...

        @bioengine.health_check
        async def healthy(self): ...

        def test_it(self): ...  # a plain method with a free name
    """
    assert check_sources_06({"m.py": py(source)}, "m:Entry") == []


def test_files_that_never_reach_replicas_are_not_parsed():
    files = {"m.py": py(APP), "frontend/build.py": b"def (:\n", "__pycache__/m.py": b"(\n"}
    assert check_sources_06(files, "m:Entry") == []


# ---- which files reach the replicas ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "main.py",
        "pkg/sub/mod.py",
        "pkg/__init__.py",
        "requirements.txt",
        "weights/model.onnx",
        "native/ext.so",
        "data/table.csv",
        "pkg/frontend/view.py",  # only the root's frontend/ is the app's web page
        "sub/manifest.yaml",  # only the root's manifest is the app's
    ],
)
def test_code_and_data_reach_the_replicas(name):
    assert reaches_replicas(name)


@pytest.mark.parametrize(
    "name",
    [
        "manifest.yaml",
        "manifest.yml",
        "README.md",
        "README",
        "readme.txt",
        "docs/guide.md",
        "CHANGES.MD",
        "tutorial.ipynb",
        "images/logo.png",
        "figure.JPG",
        "icon.svg",
        "paper.pdf",
        "frontend/index.html",
        "frontend/js/app.js",
        "__pycache__/main.cpython-311.pyc",
        "pkg/__pycache__/mod.cpython-311.pyc",
        "stale.pyc",
        "stale.pyo",
        ".gitignore",
        ".git/config",
        ".env",
        "pkg/.hidden/secret.py",
        "",
        "/abs/path.py",
    ],
)
def test_author_files_and_leftovers_stay_behind(name):
    assert not reaches_replicas(name)


def test_replica_files_is_sorted_and_unique():
    assert replica_files(["b.py", "README.md", "a.py", "b.py", "frontend/x.html"]) == ["a.py", "b.py"]
