"""Pure parts of the 0.6.0 runtime: discovery (run in-process here), sizing, the replica class
the builder makes (its lifecycle, handles and recorded failures), and installer messages."""

# No `from __future__ import annotations`: the local app classes below are composed by their
# (evaluated) type hints.

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from bioengine_app_runtime import app06

REPO = Path(__file__).resolve().parents[3]
COMPOSITION = REPO / "apps" / "composition-app-0.6"


@pytest.fixture
def discovered(monkeypatch) -> dict[str, Any]:
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(REPO)
    before = set(sys.modules)
    try:
        yield app06.discovery_task(str(COMPOSITION), "pipeline:Pipeline", {"Analyzer": {"top": 2}})
    finally:
        for name in set(sys.modules) - before:
            if name.split(".")[0] in ("pipeline", "steps", "helpers"):
                del sys.modules[name]


def test_discovery_gives_the_spec_and_the_checked_kwargs(discovered):
    spec = discovered["spec"]
    assert spec["order"] == ["steps.tokenizer:Tokenizer", "steps.analyzer:Analyzer", "pipeline:Pipeline"]
    assert discovered["kwargs"] == {
        "steps.tokenizer:Tokenizer": {},
        "steps.analyzer:Analyzer": {"top": 2},
        "pipeline:Pipeline": {},
    }
    assert [m["name"] for m in app06.entry_methods(spec)] == ["run", "describe"]
    resources = app06.deployment_resources(spec, {}, {"steps.analyzer:Analyzer": {"num_replicas": 3}})
    assert resources["num_cpus"] == pytest.approx(0.1 * 5)
    assert resources["memory"] == 128 * 1024**2 * 5


def test_gpu_sizing_follows_both_generations_of_options():
    old = {"class_name": "A", "gpu_memory_mb": None, "ray_actor_options": {"num_gpus": 0}}
    assert app06.size_gpus(old, disable_gpu=False, cluster_gpus=0) == 0
    assert app06.size_gpus({**old, "ray_actor_options": {"num_gpus": 1}}, False, 2) == 1
    new = {"class_name": "B", "gpu_memory_mb": 4000, "ray_actor_options": {}}
    assert app06.size_gpus(new, disable_gpu=True, cluster_gpus=0) == 0
    assert app06.size_gpus(new, disable_gpu=False, cluster_gpus=1) == 1
    with pytest.raises(app06.AppCodeError, match=r"'B' needs a GPU \(gpu_memory_mb=4000\).*disable_gpu=True"):
        app06.size_gpus(new, disable_gpu=False, cluster_gpus=0)


def test_the_installers_error_is_picked_from_serves_message():
    message = (
        "The deployment failed to start 3 times in a row.\nFailed to set up runtime environment.\n"
        "Traceback ...\nSubprocessCalledProcessError: Run cmd[13] failed\nLast 50 lines of stdout:\n"
        "    Looking in indexes: https://example\n"
        "    ERROR: Could not find a version that satisfies the requirement nope==1 (from versions: none)\n"
        "    ERROR: No matching distribution found for nope==1\n"
    )
    assert app06.installer_error(message) == (
        "installing the app's packages failed: ERROR: Could not find a version that satisfies the "
        "requirement nope==1 (from versions: none) ERROR: No matching distribution found for nope==1"
    )
    assert app06.installer_error("ValueError: boom in __init__") is None


class _Handle:
    def __init__(self):
        self.calls: list[tuple] = []

    @property
    def split(self):
        handle = self

        class Method:
            def remote(self, *args):
                handle.calls.append(args)
                future = asyncio.get_running_loop().create_future()
                future.set_result(["x"])
                return future

        return Method()


def test_the_replica_class_wraps_handles_runs_the_lifecycle_and_records_failures(monkeypatch, tmp_path):
    import bioengine
    from bioengine.composition import introspect_app
    from bioengine.runtime import BioEngineRuntimeHandle

    events: list[str] = []

    @bioengine.app(num_cpus=0)
    class Leaf:
        @bioengine.method
        async def split(self, text: str) -> list[str]:
            return text.split()

    @bioengine.app(num_cpus=0)
    class Root:
        def __init__(self, leaf: Leaf, size: int = 1):
            events.append("init")
            self.leaf = leaf
            self.healthy = True

        @bioengine.async_init
        async def load(self):
            events.append("async_init")

        @bioengine.smoke_test
        def smoke(self):
            events.append("smoke")
            raise AssertionError("bad weights")

        @bioengine.health_check
        def health(self):
            pass

        @bioengine.method
        async def run(self) -> list[str]:
            return await self.leaf.split("a")

    spec = introspect_app(Root)
    recorded: dict[bytes, Any] = {}
    monkeypatch.setattr(app06.kv, "get_json", lambda key: recorded.get(key))
    monkeypatch.setattr(app06.kv, "put_json", lambda key, value: recorded.__setitem__(key, value))
    monkeypatch.setenv("BIOENGINE_DATA_SERVER_URL", "http://datasets.invalid")  # no lookup
    monkeypatch.chdir(tmp_path)
    cwd = os.getcwd()
    wrapped = app06.wrap_class_06(Root, spec["deployments"][spec["entry"]], "app-1", str(tmp_path / "home"))
    assert wrapped.__name__ == "Root" and issubclass(wrapped, Root)

    async def scenario():
        raw = _Handle()
        replica = wrapped.__new__(wrapped)
        await replica.__init__(leaf=raw, size=2)
        assert isinstance(replica.leaf, BioEngineRuntimeHandle) and replica.leaf._raw is raw
        assert await replica.run() == ["x"] and raw.calls == [("a",)]
        runner = replica.__dict__["_bioengine_lifecycle_runner"]
        await runner.smoke_task
        with pytest.raises(RuntimeError, match="Smoke test failed: AssertionError: bad weights"):
            await replica.check_health()

    try:
        asyncio.run(scenario())
    finally:
        os.chdir(cwd)
    assert events == ["init", "async_init", "smoke"]
    assert os.environ.get("BIOENGINE_REPLICA") == "1"
    failure = recorded[app06.kv.health_key("app-1")]["Root"]
    assert failure["reason"] == "Smoke test failed: AssertionError: bad weights"
    os.environ.pop("BIOENGINE_REPLICA", None)


def test_the_builder_makes_one_deployment_per_class_bound_by_handles(discovered):
    from bioengine_app_runtime import App06, AppSpec, _builder

    spec = discovered["spec"]
    tokenizer, analyzer, pipeline = spec["order"]
    app_spec = AppSpec(
        application_id="compose",
        artifact_id="ws/compose",
        code_dir=str(COMPOSITION),
        home_dir="/tmp/compose-home",
        deployments=[pipeline, analyzer, tokenizer],
        env_vars={"*": {"SHARED": "1"}, "Tokenizer": {"OWN": "2"}},
        disable_gpu=True,
        server_url="http://hypha.test",
        workspace="ws",
        app06=App06(
            entry=pipeline,
            spec={
                **spec,
                "deployments": {
                    **spec["deployments"],
                    tokenizer: {
                        **spec["deployments"][tokenizer],
                        "ray_actor_options": {
                            **spec["deployments"][tokenizer]["ray_actor_options"],
                            "runtime_env": {"pip": ["humanize==4.16.0"], "env_vars": {"OWN": "author"}},
                        },
                    },
                },
            },
            init_kwargs=discovered["kwargs"],
            num_gpus={key: 0.0 for key in spec["deployments"]},
        ),
        scaling={"Analyzer": {"num_replicas": 2}},
    )
    try:
        app = _builder.build(app_spec.model_dump(mode="json"))
    finally:
        _builder._previous.update(path=None, modules=set())
    proxy = app._bound_deployment
    entry = proxy.init_args[0]._bound_deployment
    assert entry.name == "Pipeline" and entry.version == _builder.deployment_version_06(app_spec, pipeline)
    bound_analyzer = entry.init_kwargs["analyzer"]._bound_deployment
    bound_tokenizer = entry.init_kwargs["tokenizer"]._bound_deployment
    # Transitive: the Analyzer's own Tokenizer handle is the same deployment.
    assert bound_analyzer.init_kwargs["tokenizer"]._bound_deployment.name == "Tokenizer"
    assert bound_analyzer.init_kwargs["top"] == 2 and bound_analyzer.num_replicas == 2
    options = bound_tokenizer.ray_actor_options
    assert options["num_gpus"] == 0 and options["num_cpus"] == 0.1 and options["memory"] == 128 * 1024**2
    runtime_env = options["runtime_env"]
    assert runtime_env["pip"] == {"packages": ["humanize==4.16.0"], "pip_check": False}
    assert runtime_env["working_dir"] == f"local://{COMPOSITION}"
    # The deploy-time env var wins over the author's, and the platform's are set.
    assert runtime_env["env_vars"]["OWN"] == "2" and runtime_env["env_vars"]["SHARED"] == "1"
    assert runtime_env["env_vars"]["BIOENGINE_APPLICATION_ID"] == "compose"
    assert bound_tokenizer.max_ongoing_requests == 8
    # The proxy publishes the entry's methods only, and refuses calls over capacity.
    config = proxy._deployment_config.user_config
    assert [m["name"] for m in config["methods"]] == ["run", "describe"]
    assert config["refuse_when_full"] is True


READER_APP = """
import bioengine

with open("requirements-deployment.txt") as handle:  # relative to the app's folder
    PIP = [line.strip() for line in handle if line.strip()]


@bioengine.app(num_cpus=0, pip=PIP)
class Reader:
    @bioengine.method
    async def ping(self) -> str:
        return "pong"
"""


def test_a_module_reading_its_files_at_import_is_built_from_its_folder(monkeypatch, tmp_path):
    from bioengine_app_runtime import App06, AppSpec, _builder

    code = tmp_path / "code"
    code.mkdir()
    (code / "reader.py").write_text(READER_APP)
    (code / "requirements-deployment.txt").write_text("humanize==4.16.0\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    try:
        found = app06.discovery_task(str(code), "reader:Reader", {})
        sys.modules.pop("reader", None)
        monkeypatch.chdir(tmp_path)  # the deployer actor's folder is not the app's
        app_spec = AppSpec(
            application_id="reader",
            artifact_id="ws/reader",
            code_dir=str(code),
            home_dir=str(tmp_path / "home"),
            deployments=["reader:Reader"],
            server_url="http://hypha.test",
            workspace="ws",
            app06=App06(entry="reader:Reader", spec=found["spec"], init_kwargs=found["kwargs"], num_gpus={}),
        )
        app = _builder.build(app_spec.model_dump(mode="json"))
    finally:
        _builder._previous.update(path=None, modules=set())
        sys.modules.pop("reader", None)
    entry = app._bound_deployment.init_args[0]._bound_deployment
    assert entry.ray_actor_options["runtime_env"]["pip"]["packages"] == ["humanize==4.16.0"]
    assert os.getcwd() == str(tmp_path)  # the builder went back to where it was
