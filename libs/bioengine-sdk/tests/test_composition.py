"""Composition by type hints: the spec of an entry and everything it needs, and application_kwargs."""

import json
import sys
import textwrap

import pytest

import bioengine
from bioengine.composition import introspect_app, load_entry, validate_application_kwargs

# A three-level app in a package with a sub-package, as an author lays it out: the entry's module
# uses string annotations (``from __future__ import annotations``), the others plain ones.
FILES = {
    "shop/__init__.py": "",
    "shop/runtimes/__init__.py": "",
    "shop/runtimes/leaf.py": """
        import bioengine

        @bioengine.app(num_cpus=0.5, memory_mb=256, max_ongoing_requests=5)
        class Leaf:
            def __init__(self, factor: int = 2, label: str | None = None):
                self.factor = factor

            @bioengine.method
            async def scale(self, x: float) -> float:
                \"\"\"Scale x.\"\"\"
                return x * self.factor
        """,
    "shop/runtimes/middle.py": """
        import bioengine
        from shop.runtimes.leaf import Leaf

        @bioengine.app(pip=["cowsay==6.1"], num_replicas=2)
        class Middle:
            def __init__(self, leaf: Leaf, threshold: float):
                self.leaf = leaf

            @bioengine.async_init
            def warm(self):
                pass
        """,
    "shop/entry.py": """
        from __future__ import annotations

        import bioengine
        from shop.runtimes.leaf import Leaf
        from shop.runtimes.middle import Middle

        @bioengine.app(num_cpus=0, max_ongoing_requests=20)
        class Entry:
            def __init__(self, middle: Middle, leaf: Leaf, greeting: str = "hi", **extra):
                self.middle = middle

            @bioengine.method(context=True)
            async def run(self, x: float, context=None) -> float:
                \"\"\"Run.\"\"\"
                return x

            @bioengine.smoke_test
            async def smoke(self):
                pass

            @bioengine.health_check
            def alive(self):
                pass
        """,
    "shop/cycle.py": """
        from __future__ import annotations

        import bioengine

        @bioengine.app
        class Ping:
            def __init__(self, pong: Pong):
                pass

        @bioengine.app
        class Pong:
            def __init__(self, peng: Peng):
                pass

        @bioengine.app
        class Peng:
            def __init__(self, ping: Ping):
                pass

        @bioengine.app
        class Selfish:
            def __init__(self, me: Selfish):
                pass
        """,
    "shop/undecorated.py": """
        import bioengine

        class Helper:
            @bioengine.method
            def go(self) -> None:
                \"\"\"Go.\"\"\"

        @bioengine.app
        class Base:
            pass

        class Sub(Base):
            pass

        @bioengine.app
        class NeedsHelper:
            def __init__(self, helper: Helper):
                pass

        @bioengine.app
        class NeedsSub:
            def __init__(self, sub: Sub):
                pass

        @bioengine.app
        class Plain:
            def __init__(self, data: dict, when: "Unknown" = None, *args):
                pass
        """,
    "shop/broken.py": "import not_installed_package_xyz\n",
    "shop/twins_a.py": "import bioengine\n\n@bioengine.app(name='OtherTwin')\nclass Twin:\n    pass\n",
    "shop/clash.py": """
        import bioengine

        @bioengine.app(name="Same")
        class One:
            pass

        @bioengine.app(name="Same")
        class Two:
            def __init__(self, one: One):
                pass
        """,
    "shop/twins.py": """
        import bioengine
        from shop import twins_a

        @bioengine.app
        class Twin:
            def __init__(self, other: twins_a.Twin, size: int):
                pass
        """,
}


@pytest.fixture
def shop(tmp_path, monkeypatch):
    for name, text in FILES.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for module in [m for m in sys.modules if m == "shop" or m.startswith("shop.")]:
        del sys.modules[module]


def test_three_levels_with_string_annotations(shop):
    spec = introspect_app("shop.entry:Entry")
    assert spec == json.loads(json.dumps(spec))  # plain JSON
    assert spec["format_version"] == "0.6.0"
    assert spec["entry"] == "shop.entry:Entry"
    leaf, middle, entry = "shop.runtimes.leaf:Leaf", "shop.runtimes.middle:Middle", "shop.entry:Entry"
    assert spec["order"] == [leaf, middle, entry]  # each once, dependencies first
    deployments = spec["deployments"]
    assert deployments[entry]["init_params"] == [
        {"name": "middle", "kind": "handle", "target": middle},
        {"name": "leaf", "kind": "handle", "target": leaf},
        {"name": "greeting", "kind": "value", "annotation": "str", "required": False, "default": "hi"},
    ]
    assert deployments[entry]["accepts_any_kwargs"] is True
    assert deployments[entry]["lifecycle_methods"] == {
        "async_init": None,
        "smoke_test": "smoke",
        "health_check": "alive",
    }
    assert deployments[entry]["context_methods"] == ["run"]
    assert set(deployments[entry]["method_schemas"]["run"]["parameters"]["properties"]) == {"x"}
    assert deployments[entry]["max_ongoing_requests"] == 20
    assert deployments[entry]["ray_actor_options"] == {"num_cpus": 0}
    assert deployments[middle]["init_params"] == [
        {"name": "leaf", "kind": "handle", "target": leaf},
        {"name": "threshold", "kind": "value", "annotation": "float", "required": True},
    ]
    assert deployments[middle]["serve_options"] == {"num_replicas": 2}
    assert deployments[middle]["ray_actor_options"]["runtime_env"] == {"pip": ["cowsay==6.1"]}
    assert deployments[middle]["lifecycle_methods"]["async_init"] == "warm"
    assert deployments[leaf] | {"method_schemas": None} == {
        "key": leaf, "module": "shop.runtimes.leaf", "qualname": "Leaf", "class_name": "Leaf",
        "deployment_name": "Leaf", "ray_actor_options": {"num_cpus": 0.5, "memory": 256 << 20},
        "gpu_memory_mb": None, "max_ongoing_requests": 5, "serve_options": {}, "method_schemas": None,
        "context_methods": [], "lifecycle_methods": {"async_init": None, "smoke_test": None, "health_check": None},
        "init_params": [
            {"name": "factor", "kind": "value", "annotation": "int", "required": False, "default": 2},
            {"name": "label", "kind": "value", "annotation": "str | None", "required": False, "default": None},
        ],
        "accepts_any_kwargs": False,
    }  # fmt: skip
    assert deployments[leaf]["method_schemas"]["scale"]["parameters"]["required"] == ["x"]


def test_the_entry_class_itself_or_by_name(shop):
    from shop.entry import Entry

    assert introspect_app(Entry) == introspect_app("shop.entry:Entry")
    assert load_entry("shop.entry:Entry") is Entry


def test_a_cycle_is_refused_naming_its_classes(shop):
    with pytest.raises(bioengine.CompositionCycleError) as caught:
        introspect_app("shop.cycle:Ping")
    assert "shop.cycle:Ping -> shop.cycle:Pong -> shop.cycle:Peng -> shop.cycle:Ping" in str(caught.value)
    with pytest.raises(bioengine.CompositionCycleError, match=r"shop.cycle:Selfish -> shop.cycle:Selfish"):
        introspect_app("shop.cycle:Selfish")


def test_undecorated_classes_in_the_graph_are_refused(shop):
    with pytest.raises(
        bioengine.BioEngineUserError,
        match=r"'shop.undecorated:Helper', needed by 'shop.undecorated:NeedsHelper'.* not decorated",
    ):
        introspect_app("shop.undecorated:NeedsHelper")
    with pytest.raises(bioengine.BioEngineUserError, match=r"a subclass of a decorated class needs its own"):
        introspect_app("shop.undecorated:NeedsSub")
    with pytest.raises(bioengine.BioEngineUserError, match=r"'shop.undecorated:Sub' is not decorated"):
        introspect_app("shop.undecorated:Sub")


def test_other_annotations_are_values(shop):
    params = introspect_app("shop.undecorated:Plain")["deployments"]["shop.undecorated:Plain"]["init_params"]
    assert params == [
        {"name": "data", "kind": "value", "annotation": "dict", "required": True},
        {"name": "when", "kind": "value", "annotation": "Unknown", "required": False, "default": None},
    ]


def test_import_errors_name_the_module(shop):
    with pytest.raises(
        bioengine.BioEngineUserError,
        match=r"Cannot import 'shop.broken' for app entry 'shop.broken:X': ModuleNotFoundError",
    ):
        load_entry("shop.broken:X")
    with pytest.raises(bioengine.BioEngineUserError, match=r"module 'shop.entry' has no class 'Missing'"):
        load_entry("shop.entry:Missing")
    with pytest.raises(bioengine.BioEngineUserError, match=r"not of the form"):
        load_entry("Shop/entry:Entry")


def test_two_deployments_with_one_name_are_refused(shop):
    with pytest.raises(
        bioengine.BioEngineUserError,
        match=r"'shop.clash:One' and 'shop.clash:Two' would both be deployed as 'Same'",
    ):
        introspect_app("shop.clash:Two")


def test_application_kwargs_by_class_name_or_key(shop):
    spec = introspect_app("shop.entry:Entry")
    kwargs = validate_application_kwargs(
        spec,
        {"Middle": {"threshold": 0.5}, "shop.runtimes.leaf:Leaf": {"factor": 3}, "Entry": {"anything": 1}},
    )
    assert kwargs == {
        "shop.runtimes.leaf:Leaf": {"factor": 3},
        "shop.runtimes.middle:Middle": {"threshold": 0.5},
        "shop.entry:Entry": {"anything": 1},  # Entry takes **extra
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            None,
            r"'Middle.__init__' needs 'threshold': give application_kwargs=\{'Middle': \{'threshold': ...\}\}",
        ),
        (
            {"Middle": {"threshold": 1}, "Nope": {}},
            "key 'Nope' is not a class of this app; known: Entry, Leaf, Middle",
        ),
        (
            {"Middle": {"threshold": 1, "treshold": 2}},
            r"'Middle.__init__' has no parameter 'treshold' \(its parameters: threshold\)",
        ),
        (
            {"Middle": {"threshold": 1, "leaf": 2}},
            "'leaf' is a handle to 'shop.runtimes.leaf:Leaf', which BioEngine passes itself",
        ),
        (
            {"Middle": {"threshold": 1}, "shop.runtimes.middle:Middle": {}},
            "gives 'shop.runtimes.middle:Middle' twice",
        ),
        ({"Middle": [1]}, r"application_kwargs\['Middle'\] must be a dict"),
    ],
)
def test_bad_application_kwargs_are_refused(shop, kwargs, message):
    spec = introspect_app("shop.entry:Entry")
    with pytest.raises(bioengine.BioEngineUserError, match=message):
        validate_application_kwargs(spec, kwargs)


def test_an_ambiguous_class_name_is_refused(shop):
    spec = introspect_app("shop.twins:Twin")
    assert [spec["deployments"][k]["deployment_name"] for k in spec["order"]] == ["OtherTwin", "Twin"]
    with pytest.raises(
        bioengine.BioEngineUserError,
        match=r"'Twin' is ambiguous: it names shop.twins_a:Twin, shop.twins:Twin",
    ):
        validate_application_kwargs(spec, {"Twin": {"size": 1}})
    assert validate_application_kwargs(spec, {"shop.twins:Twin": {"size": 1}}) == {
        "shop.twins_a:Twin": {},
        "shop.twins:Twin": {"size": 1},
    }
