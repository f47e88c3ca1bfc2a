"""Static analysis of app code (analyze_app): deployments, decorators, resources, init kwargs and
schema methods, read from the files without importing them. Pure: no Ray, no Hypha."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from bioengine_app_format import (
    analyze_app,
    load_manifest,
)

# ---- analyze_app -----------------------------------------------------------------------------------


HEADER = "from hypha_rpc.utils.schema import schema_method\nfrom ray import serve\n"


def py(source: str) -> bytes:
    """A deployment file: the usual imports, then ``source`` (dedented)."""
    return (HEADER + textwrap.dedent(source)).encode()


def test_analyze_demo_app(read_app):
    files = read_app("demo-app")
    analysis = analyze_app(files, load_manifest(files)["deployments"])
    assert analysis.problems == []
    assert analysis.entry_class == "DemoApp"
    assert analysis.methods == ["ping", "ascii_art", "read_env"]
    assert analysis.resources == {"num_cpus": pytest.approx(0.1), "num_gpus": 0.0, "memory": 0.0}


def test_analyze_composition_app(read_app):
    files = read_app("composition-app")
    analysis = analyze_app(files, load_manifest(files)["deployments"])
    assert analysis.problems == []
    assert analysis.entry_class == "CompositionDeployment"
    assert analysis.methods == ["ping", "calculate_result"]
    assert analysis.resources == {"num_cpus": pytest.approx(0.3), "num_gpus": 0.0, "memory": 0.0}
    assert set(analysis.classes) == {"CompositionDeployment", "Deployment1", "Deployment2"}


def test_analyze_composition_app_with_matching_kwargs(read_app):
    files = read_app("composition-app")
    kwargs = {"CompositionDeployment": {"demo_input": "hi"}, "Deployment2": {"start_number": 5}}
    assert analyze_app(files, load_manifest(files)["deployments"], kwargs).problems == []


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"Deployment1": {"start_number": 1}},
            "application_kwargs.Deployment1.start_number: Deployment1.__init__ takes no 'start_number'",
        ),
        (
            {"Deployment2": {"start": 1}},
            "application_kwargs.Deployment2.start: Deployment2.__init__ takes no 'start'",
        ),
        (
            {"CompositionDeployment": {"greeting": "x"}},
            "application_kwargs.CompositionDeployment.greeting: CompositionDeployment.__init__ takes no 'greeting'",
        ),
        ({"Deployment3": {}}, "application_kwargs.Deployment3: the app has no deployment 'Deployment3'"),
    ],
)
def test_analyze_composition_app_with_bad_kwargs(kwargs, expected, read_app):
    files = read_app("composition-app")
    assert analyze_app(files, load_manifest(files)["deployments"], kwargs).problems == [expected]


def test_composition_entry_lacking_a_sub_deployment_parameter(read_app):
    files = read_app("composition-app")
    files["composition_deployment.py"] = files["composition_deployment.py"].replace(
        b"deployment_2: DeploymentHandle,", b"other: DeploymentHandle | None = None,"
    )
    analysis = analyze_app(files, load_manifest(files)["deployments"])
    assert len(analysis.problems) == 1
    assert analysis.problems[0].startswith(
        "CompositionDeployment.__init__: needs a parameter named 'deployment_2'"
    )
    assert "deployment_2:Deployment2" in analysis.problems[0]


def test_composition_entry_with_var_kwargs_receives_any_sub_deployment():
    files = {
        "entry.py": py(
            """
            @serve.deployment
            class Entry:
                def __init__(self, **handles):
                    self.handles = handles

                @schema_method
                async def ping(self):
                    return "pong"
            """
        ),
        "worker.py": py("@serve.deployment\nclass Worker:\n    pass\n"),
    }
    analysis = analyze_app(files, ["entry:Entry", "worker:Worker"], {"Entry": {"anything": 1, "else": 2}})
    assert analysis.problems == []


def single(source: str, kwargs: dict | None = None, **options: Any):
    return analyze_app({"m.py": py(source)}, ["m:App"], kwargs, **options)


APP_BODY = """
    @schema_method
    async def ping(self) -> str:
        return "pong"
"""


@pytest.mark.parametrize(
    ("decorator", "options", "expected"),
    [
        ("@serve.deployment(ray_actor_options={'num_cpus': 0.5})", {}, (0.5, 0, 0)),
        ("@serve.deployment(num_replicas=3, ray_actor_options={'num_cpus': 0.5})", {}, (1.5, 0, 0)),
        ("@serve.deployment(ray_actor_options={'num_cpus': 1, 'num_gpus': 1})", {}, (1, 1, 0)),
        ("@serve.deployment(num_replicas=2, ray_actor_options={'num_gpus': 0.5})", {}, (0.2, 1, 0)),
        (
            "@serve.deployment(num_replicas=2, ray_actor_options={'num_gpus': 1})",
            {"disable_gpu": True},
            (0.2, 0, 0),
        ),
        ("@serve.deployment(ray_actor_options={'memory': 2 * 1024})", {}, (0.1, 0, 0)),  # computed
        ("@serve.deployment(ray_actor_options={'memory': 2048})", {}, (0.1, 0, 2048)),
        ("@serve.deployment(num_replicas=4, ray_actor_options={'memory': 100})", {}, (0.4, 0, 400)),
        ("@serve.deployment", {"default_num_cpus": 0.25}, (0.25, 0, 0)),
        ("@serve.deployment()", {"default_num_cpus": 2}, (2, 0, 0)),
        ("@serve.deployment(ray_actor_options={'num_gpus': 1})", {"default_num_cpus": 0.5}, (0.5, 1, 0)),
        ("@serve.deployment(ray_actor_options={'num_cpus': 0})", {"default_num_cpus": 0.5}, (0, 0, 0)),
        ("@serve.deployment(num_replicas='auto')", {}, (0.1, 0, 0)),  # not an int: one replica
        ("@serve.deployment(ray_actor_options=OPTIONS)", {"default_num_cpus": 0.3}, (0.3, 0, 0)),
        ("@deployment(ray_actor_options={'num_cpus': 4})", {}, (4, 0, 0)),
    ],
)
def test_resources_from_decorators(decorator, options, expected):
    analysis = single(
        f"{decorator}\nclass App:\n" + textwrap.indent(textwrap.dedent(APP_BODY), "    "), **options
    )
    assert analysis.problems == []
    cpus, gpus, memory = expected
    assert analysis.resources == {
        "num_cpus": pytest.approx(cpus),
        "num_gpus": pytest.approx(gpus),
        "memory": pytest.approx(memory),
    }


def test_resources_sum_over_deployments(read_app):
    files = read_app("composition-app")
    files["deployment_2.py"] = files["deployment_2.py"].replace(
        b'@serve.deployment(ray_actor_options={"num_cpus": 0.1})',
        b'@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 1, "num_gpus": 1})',
    )
    deployments = load_manifest(files)["deployments"]
    analysis = analyze_app(files, deployments)
    assert analysis.resources == {"num_cpus": pytest.approx(2.2), "num_gpus": 2.0, "memory": 0.0}
    no_gpu = analyze_app(files, deployments, disable_gpu=True)
    assert no_gpu.resources["num_gpus"] == 0.0
    assert no_gpu.resources["num_cpus"] == pytest.approx(2.2)


def test_syntax_error_is_reported_with_file_and_line(read_app):
    files = read_app("composition-app")
    files["deployment_1.py"] += b"\ndef broken(:\n    pass\n"
    line = files["deployment_1.py"].decode().splitlines().index("def broken(:") + 1
    analysis = analyze_app(files, load_manifest(files)["deployments"])
    assert len(analysis.problems) == 1
    assert analysis.problems[0].startswith(f"deployment_1.py line {line}: syntax error")
    # The other deployments are still analysed.
    assert set(analysis.classes) == {"CompositionDeployment", "Deployment2"}
    assert analysis.methods == ["ping", "calculate_result"]


def test_syntax_error_in_the_entry_file():
    analysis = analyze_app({"m.py": b"x = 1\nclass App(:\n"}, ["m:App"])
    assert len(analysis.problems) == 1
    assert analysis.problems[0].startswith("m.py line 2: syntax error: ")
    assert analysis.methods == []


def test_non_utf8_file_is_reported():
    analysis = analyze_app({"m.py": b"\xff\xfe class"}, ["m:App"])
    assert analysis.problems == ["m.py: not UTF-8 text"]


def test_missing_file_is_reported():
    analysis = analyze_app({"other.py": b""}, ["m:App"])
    assert analysis.problems == ["m:App: the app has no file 'm.py'"]
    assert analysis.entry_class == "App"
    assert analysis.methods == []


def test_missing_class_is_reported():
    analysis = single("@serve.deployment\nclass Other:\n    pass\n")
    assert analysis.problems == ["m:App: 'm.py' defines no class 'App'"]


def test_nested_class_does_not_count():
    analysis = single("def factory():\n    @serve.deployment\n    class App:\n        pass\n    return App\n")
    assert analysis.problems == ["m:App: 'm.py' defines no class 'App'"]


@pytest.mark.parametrize("decorator", ["", "@dataclass", "@serve.ingress(app)", "@my_deployment"])
def test_class_without_serve_deployment_is_reported(decorator):
    analysis = single(f"{decorator}\nclass App:\n" + textwrap.indent(textwrap.dedent(APP_BODY), "    "))
    assert analysis.problems == ["m:App: class 'App' is not decorated with @serve.deployment"]
    assert analysis.methods == ["ping"]


@pytest.mark.parametrize(
    "decorator",
    ["@serve.deployment", "@serve.deployment()", "@deployment", "@ray.serve.deployment(num_replicas=1)"],
)
def test_deployment_decorator_forms(decorator):
    analysis = single(f"{decorator}\nclass App:\n" + textwrap.indent(textwrap.dedent(APP_BODY), "    "))
    assert analysis.problems == []


@pytest.mark.parametrize(
    "body",
    [
        "    async def ping(self):\n        return 'pong'\n",
        "    @schema_method\n    async def _hidden(self):\n        return 1\n",
        "    @staticmethod\n    def helper():\n        return 1\n",
        "    pass\n",
    ],
)
def test_entry_without_schema_methods_is_reported(body):
    analysis = single("@serve.deployment\nclass App:\n" + body)
    assert analysis.problems == ["App: the entry deployment has no @schema_method methods to expose"]
    assert analysis.methods == []


def test_schema_method_forms_are_found_in_order():
    analysis = single(
        """
        import hypha_rpc

        @serve.deployment
        class App:
            @schema_method
            def sync_method(self):
                return 1

            @schema_method(arbitrary_types_allowed=True)
            async def called_form(self):
                return 2

            @hypha_rpc.utils.schema.schema_method
            async def dotted_form(self):
                return 3

            async def plain(self):
                return 4

            @schema_method
            async def _private(self):
                return 5
        """
    )
    assert analysis.problems == []
    assert analysis.methods == ["sync_method", "called_form", "dotted_form"]


def test_only_the_entry_needs_schema_methods(read_app):
    files = read_app("composition-app")
    analysis = analyze_app(files, load_manifest(files)["deployments"])
    assert analysis.classes["Deployment1"].schema_methods == []
    assert analysis.problems == []


INIT_APP = """
@serve.deployment
class App:
    def __init__(self, model: str, threshold: float = 0.5, *, device: str, batch: int = 1, flag=None):
        pass

    @schema_method
    async def ping(self):
        return "pong"
"""


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"App": {"model": "m", "device": "cpu"}}, []),
        ({"App": {"model": "m", "device": "cpu", "threshold": 1, "batch": 2, "flag": True}}, []),
        (None, ["application_kwargs.App: missing required argument(s) model, device"]),
        ({}, ["application_kwargs.App: missing required argument(s) model, device"]),
        ({"App": {"model": "m"}}, ["application_kwargs.App: missing required argument(s) device"]),
        ({"App": {"device": "cpu"}}, ["application_kwargs.App: missing required argument(s) model"]),
        (
            {"App": {"model": "m", "device": "cpu", "color": "red"}},
            ["application_kwargs.App.color: App.__init__ takes no 'color'"],
        ),
        (
            {"App": {"model": "m", "device": "cpu"}, "Ghost": {"x": 1}},
            ["application_kwargs.Ghost: the app has no deployment 'Ghost'"],
        ),
        (
            {"App": ["model", "device"]},
            [
                "application_kwargs.App: must be a mapping of argument names to values",
                "application_kwargs.App: missing required argument(s) model, device",
            ],
        ),
        (
            {"App": 5},  # used to crash with TypeError
            [
                "application_kwargs.App: must be a mapping of argument names to values",
                "application_kwargs.App: missing required argument(s) model, device",
            ],
        ),
    ],
)
def test_init_kwargs_against_the_signature(kwargs, expected):
    assert single(INIT_APP, kwargs).problems == expected


def test_positional_only_parameters():
    analysis = single(
        """
        @serve.deployment
        class App:
            def __init__(self, a, /, b=1):
                pass

            @schema_method
            async def ping(self):
                return "pong"
        """,
        {"App": {"b": 2}},
    )
    assert analysis.problems == ["application_kwargs.App: missing required argument(s) a"]


def test_var_kwargs_accepts_anything():
    analysis = single(
        """
        @serve.deployment
        class App:
            def __init__(self, required, **kwargs):
                pass

            @schema_method
            async def ping(self):
                return "pong"
        """,
        {"App": {"required": 1, "x": 1, "y": [2], "z": {"n": 3}}},
    )
    assert analysis.problems == []


def test_class_without_init_takes_no_kwargs():
    analysis = single(
        "@serve.deployment\nclass App:\n" + textwrap.indent(textwrap.dedent(APP_BODY), "    "),
        {"App": {"x": 1}},
    )
    assert analysis.problems == ["application_kwargs.App.x: App.__init__ takes no 'x'"]


def test_class_with_object_base_and_no_init_takes_no_kwargs():
    analysis = single(
        "@serve.deployment\nclass App(object):\n" + textwrap.indent(textwrap.dedent(APP_BODY), "    "),
        {"App": {"x": 1}},
    )
    assert analysis.problems == ["application_kwargs.App.x: App.__init__ takes no 'x'"]


def test_inherited_init_and_schema_methods_are_not_rejected():
    """A base class may define __init__ and the schema methods: the source alone cannot tell."""
    analysis = analyze_app(
        {
            "m.py": py(
                """
                from base import Base

                @serve.deployment
                class App(Base):
                    pass
                """
            )
        },
        ["m:App"],
        {"App": {"model_name": "x"}},
    )
    assert analysis.problems == []
    assert analysis.methods == []


def test_subclass_with_its_own_init_is_still_checked():
    analysis = single(
        """
        class Base:
            pass

        @serve.deployment
        class App(Base):
            def __init__(self, a):
                pass
        """,
        {"App": {"b": 1}},
    )
    assert analysis.problems == [
        "application_kwargs.App.b: App.__init__ takes no 'b'",
        "application_kwargs.App: missing required argument(s) a",
    ]


def test_sub_deployment_handles_count_as_given_for_the_entry(read_app):
    files = read_app("composition-app")
    analysis = analyze_app(files, load_manifest(files)["deployments"], {})
    assert analysis.classes["CompositionDeployment"].init_required == ["deployment_1", "deployment_2"]
    assert analysis.problems == []


def test_every_problem_of_an_app_is_reported():
    files = {
        "entry.py": py(
            """
            @serve.deployment
            class Entry:
                def __init__(self, sub_a):
                    pass
            """
        ),
        "sub_a.py": py("class SubA:\n    pass\n"),
        "sub_b.py": b"x = (\n",
    }
    analysis = analyze_app(files, ["entry:Entry", "sub_a:SubA", "sub_b:SubB", "sub_c:SubC"], {"Nope": {}})
    problems = analysis.problems
    assert "sub_a:SubA: class 'SubA' is not decorated with @serve.deployment" in problems
    assert any(p.startswith("sub_b.py line 1: syntax error") for p in problems)
    assert "sub_c:SubC: the app has no file 'sub_c.py'" in problems
    assert "Entry: the entry deployment has no @schema_method methods to expose" in problems
    assert any(p.startswith("Entry.__init__: needs a parameter named 'sub_b'") for p in problems)
    assert any(p.startswith("Entry.__init__: needs a parameter named 'sub_c'") for p in problems)
    assert "application_kwargs.Nope: the app has no deployment 'Nope'" in problems
    assert len(problems) == 7


def test_kwargs_for_a_deployment_whose_file_failed_are_not_called_unknown():
    analysis = analyze_app({"m.py": b"class App(:\n"}, ["m:App"], {"App": {"x": 1}})
    assert len(analysis.problems) == 1
    assert analysis.problems[0].startswith("m.py line 1: syntax error")


def test_no_deployments():
    analysis = analyze_app({"m.py": b""}, [])
    assert analysis.entry_class == ""
    assert analysis.methods == []
    assert analysis.problems == []
    assert analysis.resources == {"num_cpus": 0.0, "num_gpus": 0.0, "memory": 0.0}


def test_entry_kwarg_named_like_a_sub_deployment_is_refused():
    files = {
        "entry.py": (
            b"from ray import serve\nfrom hypha_rpc.utils.schema import schema_method\n"
            b"@serve.deployment\nclass Entry:\n    def __init__(self, helper, x=1):\n        pass\n"
            b"    @schema_method\n    async def f(self) -> int:\n        return 1\n"
        ),
        "helper.py": b"from ray import serve\n@serve.deployment\nclass Helper:\n    pass\n",
    }
    analysis = analyze_app(files, ["entry:Entry", "helper:Helper"], {"Entry": {"helper": 3}})
    assert any("Entry.helper: 'helper' receives the handle" in p for p in analysis.problems)


def test_custom_resources_are_summed_for_the_fit_check():
    files = {
        "entry.py": (
            b"from ray import serve\nfrom hypha_rpc.utils.schema import schema_method\n"
            b"@serve.deployment(num_replicas=2, ray_actor_options={'num_cpus': 0.5, 'resources': {'scope': 0.5}})\n"
            b"class Entry:\n    @schema_method\n    async def f(self) -> int:\n        return 1\n"
        ),
    }
    analysis = analyze_app(files, ["entry:Entry"])
    assert analysis.problems == []
    assert analysis.resources == {"num_cpus": 1.0, "num_gpus": 0.0, "memory": 0.0, "scope": 1.0}
