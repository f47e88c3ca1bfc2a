"""@bioengine.app, @bioengine.method and the lifecycle markers: what they record and refuse."""

import json
import subprocess
import sys
import types

import pytest
from pydantic import Field

import bioengine
from bioengine.decorators import AppOptions, app_definition


def test_import_and_decorators_load_no_ray():
    code = (
        "import sys, bioengine\n"
        "@bioengine.app(num_cpus=1, pip=['x'])\n"
        "class A:\n"
        "    @bioengine.method\n"
        "    def ping(self) -> str:\n"
        "        'Ping.'\n"
        "        return 'pong'\n"
        "    @bioengine.async_init\n"
        "    async def setup(self): pass\n"
        "from bioengine.composition import introspect_app\n"
        "introspect_app(A)\n"
        "bioengine.logger.info('x'); bioengine.datasets; bioengine.BioEngineRuntimeHandle\n"
        "assert A().ping() == 'pong'\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'zarr', 'aiohttp')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_public_surface():
    for name in bioengine.__all__:
        assert getattr(bioengine, name) is not None, name
    assert issubclass(bioengine.ReservedMethodNameError, bioengine.BioEngineUserError)
    assert issubclass(bioengine.CompositionCycleError, bioengine.BioEngineUserError)
    assert issubclass(bioengine.MissingDataServerError, bioengine.BioEngineUserError)
    assert bioengine.__version__ == "0.1.0"
    assert set(bioengine.__all__) <= set(dir(bioengine))
    with pytest.raises(AttributeError, match=r"no attribute 'nope'"):
        _ = bioengine.nope


def test_logger_outside_and_inside_a_replica(monkeypatch):
    monkeypatch.delenv("BIOENGINE_REPLICA", raising=False)
    assert bioengine.logger.name == "bioengine.app"
    monkeypatch.setenv("BIOENGINE_REPLICA", "1")
    assert bioengine.logger.name == "ray.serve"


def test_logger_asks_serve_when_it_is_loaded(monkeypatch):
    monkeypatch.delenv("BIOENGINE_REPLICA", raising=False)
    serve = types.ModuleType("ray.serve")
    serve.get_replica_context = lambda: (_ for _ in ()).throw(RuntimeError("not in a replica"))
    monkeypatch.setitem(sys.modules, "ray.serve", serve)
    assert bioengine.logger.name == "bioengine.app"
    serve.get_replica_context = lambda: object()
    assert bioengine.logger.name == "ray.serve"


def test_app_records_options_and_returns_the_class_itself():
    @bioengine.app(
        num_cpus=0.5, memory_mb=512, pip=["cowsay==6.1"], env_vars={"A": "1"}, max_ongoing_requests=3,
        ray_actor_options={"runtime_env": {"env_vars": {"B": "2"}}, "resources": {"x": 1}},
        num_replicas=2, autoscaling_config=None, name="Custom",
    )  # fmt: skip
    class Model:
        def __init__(self, size: int = 2):
            self.size = size

    assert isinstance(Model, type) and Model(3).size == 3
    options = app_definition(Model).options
    assert options.serve_kwargs == {"num_replicas": 2, "autoscaling_config": None, "name": "Custom"}
    assert options.actor_options() == {
        "num_cpus": 0.5,
        "memory": 512 * 1024 * 1024,
        "runtime_env": {"pip": ["cowsay==6.1"], "env_vars": {"A": "1", "B": "2"}},
        "resources": {"x": 1},
    }


def test_defaults_and_bare_decorator():
    @bioengine.app
    class Bare:
        pass

    options = app_definition(Bare).options
    assert options == AppOptions()
    assert options.max_ongoing_requests == 10
    assert options.actor_options() == {"num_cpus": 1}
    assert app_definition(type("Plain", (), {})) is None


def test_both_gpu_generations_are_accepted():
    @bioengine.app(num_gpus=0)
    class Old:
        pass

    @bioengine.app(num_gpus=1)
    class OldGpu:
        pass

    @bioengine.app(gpu_memory_mb=2048)
    class New:
        pass

    @bioengine.app(gpu_memory_mb=-1)
    class Whole:
        pass

    assert app_definition(Old).options.actor_options()["num_gpus"] == 0
    assert app_definition(OldGpu).options.actor_options()["num_gpus"] == 1
    assert "num_gpus" not in app_definition(New).options.actor_options()
    assert app_definition(New).options.gpu_memory_mb == 2048
    assert app_definition(Whole).options.gpu_memory_mb == -1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_cpus": -1}, "option 'num_cpus': Input should be greater than or equal to 0"),
        ({"num_cpus": "2"}, "option 'num_cpus'"),
        ({"gpu_memory_mb": 0}, "option 'gpu_memory_mb': must be a positive number of MiB, or -1"),
        ({"memory_mb": 0}, "option 'memory_mb'"),
        ({"pip": "numpy"}, "option 'pip'"),
        ({"pip": ["ok", " "]}, "option 'pip': an empty requirement"),
        ({"env_vars": {"1BAD": "x"}}, "option 'env_vars': '1BAD' is not an environment variable name"),
        ({"env_vars": {"A": 1}}, "option 'env_vars'"),
        ({"max_ongoing_requests": 0}, "option 'max_ongoing_requests'"),
        ({"container_image": "img", "pip": ["x"]}, "container_image and pip cannot be combined"),
        ({"num_gpus": 1, "gpu_memory_mb": 10}, "gpu_memory_mb or the older num_gpus, not both"),
        ({"num_replica": 2}, "unknown option 'num_replica'; besides"),
        (
            {"ray_actor_options": {"x": object()}},
            "option 'ray_actor_options': ray_actor_options must be plain JSON",
        ),
    ],
)
def test_bad_options_are_refused_by_name(options, message):
    with pytest.raises(bioengine.BioEngineUserError) as caught:

        @bioengine.app(**options)
        class Broken:
            pass

    assert "@bioengine.app on " in str(caught.value) and "Broken" in str(caught.value)
    assert message in str(caught.value)


def test_app_decorates_classes_only():
    with pytest.raises(bioengine.BioEngineUserError, match=r"decorates a class"):
        bioengine.app()(lambda: None)


@pytest.mark.parametrize(
    "name", ["check_health", "test_deployment", "bioengine_runtime_version", "async_init"]
)
def test_reserved_method_names(name):
    with pytest.raises(bioengine.ReservedMethodNameError, match=rf"'{name}' is a name BioEngine reserves"):
        bioengine.app(type("R", (), {name: lambda self: None}))


def test_a_reserved_name_inherited_is_refused_too():
    class Base:
        def check_health(self):
            pass

    with pytest.raises(
        bioengine.ReservedMethodNameError, match=r"mark a health check with @bioengine.health_check"
    ):

        @bioengine.app
        class Child(Base):
            pass


def test_async_init_may_be_named_async_init():
    @bioengine.app
    class Named:
        @bioengine.async_init
        async def async_init(self):
            pass

    assert app_definition(Named).hooks == {"async_init": "async_init"}


@pytest.mark.parametrize("kind", ["async_init", "smoke_test", "health_check"])
def test_duplicate_hooks_are_refused(kind):
    mark = getattr(bioengine, kind)
    with pytest.raises(
        bioengine.ReservedMethodNameError, match=rf"both 'one' and 'two' are marked @bioengine.{kind}"
    ):
        bioengine.app(type("D", (), {"one": mark(lambda self: None), "two": mark(lambda self: None)}))


def test_hooks_bare_or_called_sync_or_async():
    @bioengine.app
    class Hooks:
        @bioengine.async_init
        def prepare(self):
            pass

        @bioengine.smoke_test
        async def try_it(self):
            pass

        @bioengine.health_check()
        def alive(self):
            pass

    @bioengine.app
    class BareHealth:
        @bioengine.health_check
        async def alive(self):
            pass

    assert app_definition(Hooks).hooks == {
        "async_init": "prepare",
        "smoke_test": "try_it",
        "health_check": "alive",
    }
    assert app_definition(BareHealth).hooks == {"health_check": "alive"}


def test_hooks_and_methods_are_inherited_by_a_decorated_subclass():
    class Base:
        @bioengine.method
        def ping(self) -> str:
            """Ping."""
            return "pong"

        @bioengine.smoke_test
        def smoke(self):
            pass

    @bioengine.app
    class Child(Base):
        pass

    assert app_definition(Child).methods == {"ping": {"context": False}}
    assert app_definition(Child).hooks == {"smoke_test": "smoke"}


def test_method_bare_and_called_with_a_schema():
    @bioengine.app
    class Text:
        @bioengine.method
        async def reverse(self, text: str = Field(..., description="what to reverse")) -> str:
            """Reverse a text."""
            return text[::-1]

        @bioengine.method()
        def count(self, items: list[int], scale: float = 1.0) -> float:
            """Sum times scale."""
            return sum(items) * scale

    schema = Text.reverse.__schema__
    assert schema["name"] == "reverse" and schema["description"] == "Reverse a text."
    assert schema["parameters"]["properties"]["text"] == {"description": "what to reverse", "type": "string"}
    assert schema["parameters"]["required"] == ["text"]
    assert Text().count([1, 2], scale=2) == 6.0
    assert app_definition(Text).methods == {"reverse": {"context": False}, "count": {"context": False}}
    json.dumps(Text.count.__schema__)


async def test_method_with_context_hides_it_from_the_schema():
    @bioengine.app
    class Who:
        @bioengine.method(context=True)
        async def whoami(self, greeting: str = "hi", context=None) -> str:
            """Who is calling."""
            return f"{greeting} {context['user']['id']}"

        @bioengine.method(context=True)
        async def required(self, context: dict) -> str:
            """Context without a default."""
            return "x"

    assert set(Who.whoami.__schema__["parameters"]["properties"]) == {"greeting"}
    assert "context" not in Who.required.__schema__["parameters"].get("required", [])
    assert "context" not in Who.required.__schema__["parameters"].get("properties", {})
    assert await Who().whoami(context={"user": {"id": "ann"}}) == "hi ann"
    assert app_definition(Who).methods["whoami"] == {"context": True}


def test_context_true_needs_a_context_parameter():
    with pytest.raises(bioengine.BioEngineUserError, match=r"needs a parameter named 'context'"):

        @bioengine.method(context=True)
        def no_context(self) -> None:
            """Nope."""


def test_method_errors_name_the_method():
    with pytest.raises(
        bioengine.BioEngineUserError, match=r"@bioengine.method on .*bad_default.*json serializable"
    ):

        @bioengine.method
        def bad_default(self, x: object = object()) -> None:
            """Bad."""
