"""Pure parts of apps-svc: manifest and file checks, static app analysis, the reconciler.

No Ray, no Hypha, no network: these functions decide what is deployed, so their edge cases are
tested here directly (the example apps under ``apps/`` are read from disk).
"""

from __future__ import annotations

import base64
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from bioengine_app_runtime import AppSpec
from bioengine_apps import _manifest
from bioengine_apps._analysis import analyze_app
from bioengine_apps._manifest import (
    REQUIRED_FIELDS,
    decode_files,
    load_manifest,
    validate_manifest,
    version_key,
)
from bioengine_apps._state import (
    SECRET_MASK,
    AppRecord,
    ObservedApp,
    Plan,
    plan,
    redeploy_delay,
    resolve_authorized_users,
    spec_hash,
    split_env_vars,
)

APPS = Path(__file__).resolve().parents[3] / "apps"


def read_app(name: str) -> dict[str, bytes]:
    """An example app's files as apps-svc holds them: {relative name: bytes}."""
    folder = APPS / name
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


_DROP = object()  # valid_manifest(field=_DROP) leaves the field out


def valid_manifest(**changes: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "name": "Demo App",
        "id": "demo-app",
        "id_emoji": "👋",
        "description": "A demo.",
        "type": "ray-serve",
        "deployments": ["demo_app:DemoApp"],
    }
    manifest.update(changes)
    return {k: v for k, v in manifest.items() if v is not _DROP}


def has_problem(problems: list[str], prefix: str) -> bool:
    return any(p.startswith(prefix) for p in problems)


# ---- validate_manifest -----------------------------------------------------------------------------


def test_valid_manifest_has_no_problems_with_and_without_file_names():
    assert validate_manifest(valid_manifest()) == []
    assert validate_manifest(valid_manifest(), ["demo_app.py", "manifest.yaml"]) == []


@pytest.mark.parametrize("field", REQUIRED_FIELDS)
@pytest.mark.parametrize("missing", ["drop", None, ""])
def test_each_required_field_is_reported_by_name(field, missing):
    manifest = valid_manifest(**{field: _DROP if missing == "drop" else missing})
    problems = validate_manifest(manifest)
    assert f"{field}: required" in problems
    assert not any(p.endswith("required") and not p.startswith(field) for p in problems)


def test_every_missing_required_field_is_reported_at_once():
    problems = validate_manifest({"tags": ["x"]})
    assert problems == [f"{field}: required" for field in REQUIRED_FIELDS]


def test_load_manifest_lists_every_missing_field_in_one_error():
    with pytest.raises(ValueError) as info:
        load_manifest({"manifest.yaml": b"license: MIT\n"})
    message = str(info.value)
    assert message.startswith("invalid manifest.yaml: ")
    for field in REQUIRED_FIELDS:
        assert f"{field}: required" in message


@pytest.mark.parametrize("manifest", [None, [], ["name", "id"], "name: x", 5])
def test_manifest_must_be_a_mapping(manifest):
    assert validate_manifest(manifest) == ["manifest: must be a YAML mapping"]


@pytest.mark.parametrize(
    "app_id",
    [
        "demo_app",  # underscore
        "Demo-App",  # uppercase
        "DEMO",
        "ws/demo-app",  # slash
        "demo--app",  # double hyphen
        "-demo",
        "demo-",
        "demo app",
        "démo",
        "demo-app\n",  # '$' would accept a trailing newline
        5,
        ["demo-app"],
    ],
)
def test_bad_ids_are_rejected(app_id):
    problems = validate_manifest(valid_manifest(id=app_id))
    assert has_problem(problems, "id: "), problems
    assert not has_problem(problems, "id: required")


@pytest.mark.parametrize("app_id", ["demo-app", "a", "app2", "3d-viewer", "a-b-c-1"])
def test_good_ids_are_accepted(app_id):
    assert validate_manifest(valid_manifest(id=app_id)) == []


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("name", 5, "name: must be a string"),
        ("name", ["Demo"], "name: must be a string"),
        ("id_emoji", 1, "id_emoji: must be a string"),
        ("description", {"text": "x"}, "description: must be a string"),
        ("type", "ray", "type: must be 'ray-serve'"),
        ("type", "Ray-Serve", "type: must be 'ray-serve'"),
        ("type", ["ray-serve"], "type: must be 'ray-serve'"),
        ("version", ["1.0"], "version: must be a string"),
        ("version", {"major": 1}, "version: must be a string"),
    ],
)
def test_wrong_types_are_reported_with_the_field(field, value, expected):
    problems = validate_manifest(valid_manifest(**{field: value}))
    assert has_problem(problems, expected), problems


@pytest.mark.parametrize("version", ["1.0.0", "2", 3, 1.5])
def test_version_may_be_a_string_or_number(version):
    assert validate_manifest(valid_manifest(version=version)) == []


@pytest.mark.parametrize(
    "entry",
    [
        "demo_app",  # no colon
        "demo_app:",
        ":DemoApp",
        "demo-app:DemoApp",  # a hyphenated stem cannot be imported
        "sub/demo_app:DemoApp",
        "demo_app.py:DemoApp",
        "demo_app:Demo.App",
        "demo_app:DemoApp:extra",
        "demo_app:DemoApp\n",
        "1app:DemoApp",
        "demo_app :DemoApp",
        5,
        None,
        {"demo_app": "DemoApp"},
    ],
)
def test_deployments_must_be_stem_colon_class(entry):
    problems = validate_manifest(valid_manifest(deployments=["demo_app:DemoApp", entry]))
    assert has_problem(problems, "deployments[1]: "), problems
    assert "<file stem>:<ClassName>" in " ".join(problems)
    assert not has_problem(problems, "deployments[0]")


@pytest.mark.parametrize("deployments", ["demo_app:DemoApp", [], {"a": "b"}, 5])
def test_deployments_must_be_a_non_empty_list(deployments):
    problems = validate_manifest(valid_manifest(deployments=deployments))
    assert has_problem(problems, "deployments: must be a non-empty list"), problems


def test_deployment_naming_a_file_not_present_is_reported():
    manifest = valid_manifest(deployments=["demo_app:DemoApp", "helper:Helper"])
    problems = validate_manifest(manifest, ["manifest.yaml", "demo_app.py"])
    assert problems == ["deployments[1]: the app has no file 'helper.py'"]
    # Without the file list only the form is checked.
    assert validate_manifest(manifest) == []


def test_duplicate_deployment_is_reported():
    problems = validate_manifest(valid_manifest(deployments=["demo_app:DemoApp", "demo_app:DemoApp"]))
    assert problems == ["deployments: an entry appears twice"]


@pytest.mark.parametrize(
    "rule",
    [
        ["*"],
        [],
        ["alice@example.org", "user-123"],
        {"*": ["*"]},
        {"*": ["*"], "read_env": []},
        {"ping": ["alice"], "*": ["bob", "carol@example.org"]},
        {},
    ],
)
def test_authorized_users_list_and_dict_forms_are_accepted(rule):
    assert validate_manifest(valid_manifest(authorized_users=rule)) == []


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("alice", "authorized_users: must be a list of users or a {method: [users]} mapping"),
        (None, "authorized_users: must be a list of users or a {method: [users]} mapping"),
        (5, "authorized_users: must be a list of users or a {method: [users]} mapping"),
        ([""], "authorized_users: every entry must be a non-empty string"),
        (["alice", 5], "authorized_users: every entry must be a non-empty string"),
        ([["alice"]], "authorized_users: every entry must be a non-empty string"),
        ({"ping": "alice"}, "authorized_users.ping: must be a list"),
        ({"ping": None}, "authorized_users.ping: must be a list"),
        ({"ping": [None]}, "authorized_users.ping: must be a list"),
        ({"*": ["*"], "read_env": [""]}, "authorized_users.read_env: must be a list"),
        ({5: ["alice"]}, "authorized_users.5: must be a list"),
    ],
)
def test_bad_authorized_users_are_reported(rule, expected):
    problems = validate_manifest(valid_manifest(authorized_users=rule))
    assert has_problem(problems, expected), problems
    assert len(problems) == 1


def test_authorized_users_dict_reports_every_bad_method():
    problems = validate_manifest(valid_manifest(authorized_users={"a": "x", "b": ["ok"], "c": [1]}))
    assert sorted(problems) == [
        "authorized_users.a: must be a list of user ids or emails",
        "authorized_users.c: must be a list of user ids or emails",
    ]


def test_frontend_entry_must_be_a_file_of_the_app():
    names = ["manifest.yaml", "demo_app.py", "frontend/index.html"]
    assert validate_manifest(valid_manifest(frontend_entry="frontend/index.html"), names) == []
    problems = validate_manifest(valid_manifest(frontend_entry="frontend/missing.html"), names)
    assert problems == ["frontend_entry: 'frontend/missing.html' is not a file of the app"]
    # Without a file list any string is accepted; a non-string never is.
    assert validate_manifest(valid_manifest(frontend_entry="index.html")) == []
    assert has_problem(validate_manifest(valid_manifest(frontend_entry=["index.html"])), "frontend_entry")
    assert has_problem(validate_manifest(valid_manifest(frontend_entry=5), names), "frontend_entry")


def test_independent_problems_are_all_reported():
    manifest = valid_manifest(
        id="Bad_Id", type="docker", deployments=["nocolon"], name=3, authorized_users="x", description=_DROP
    )
    problems = validate_manifest(manifest)
    for prefix in ("description: required", "name:", "id:", "type:", "deployments[0]", "authorized_users:"):
        assert has_problem(problems, prefix), (prefix, problems)


def test_free_metadata_is_allowed():
    manifest = valid_manifest(format_version="0.5.0", authors=[{"name": "x"}], tags=["a"], license="MIT")
    assert validate_manifest(manifest) == []


# ---- decode_files ----------------------------------------------------------------------------------


def test_decode_text_and_base64_files():
    binary = bytes(range(256))
    files = decode_files(
        [
            {"name": "manifest.yaml", "content": "id: x\n", "type": "text"},
            {"name": "main.py", "content": "print('ü')\n"},  # type defaults to text
            {"name": "weights.bin", "content": base64.b64encode(binary).decode(), "type": "base64"},
            {"name": "frontend/index.html", "content": "<html/>", "type": "text"},
        ]
    )
    assert files == {
        "manifest.yaml": b"id: x\n",
        "main.py": "print('ü')\n".encode(),
        "weights.bin": binary,
        "frontend/index.html": b"<html/>",
    }


@pytest.mark.parametrize(
    "prefix", ["data:application/octet-stream;base64,", "data:image/png;base64,", "data:;base64,"]
)
def test_decode_base64_with_a_data_url_prefix(prefix):
    data = b"\x89PNG\r\n\x1a\n-not-really"
    content = prefix + base64.b64encode(data).decode()
    assert decode_files([{"name": "cover.png", "content": content, "type": "base64"}]) == {"cover.png": data}


def test_decode_empty_contents():
    assert decode_files([{"name": "empty.txt", "content": "", "type": "text"}]) == {"empty.txt": b""}
    assert decode_files([{"name": "empty.bin", "content": "", "type": "base64"}]) == {"empty.bin": b""}


@pytest.mark.parametrize(
    "content",
    [
        "not base64!!",
        "abc",  # bad padding
        "QUJD\nREVG",  # a newline is not base64 with validate=True
        "äöü",
        "data:application/octet-stream;base64,@@@@",
        "data:no-comma-here",  # used to become an empty file
        None,  # used to become an empty file
        5,
        ["QUJD"],
    ],
)
def test_invalid_base64_is_reported_with_the_file_name(content):
    with pytest.raises(ValueError, match=r"files\[0\]\.content \('bad\.bin'\)"):
        decode_files([{"name": "bad.bin", "content": content, "type": "base64"}])


@pytest.mark.parametrize("content", [None, 5, b"bytes", ["x"]])
def test_text_content_must_be_a_string(content):
    with pytest.raises(ValueError, match=r"files\[0\]\.content \('a\.py'\) must be a string for type 'text'"):
        decode_files([{"name": "a.py", "content": content, "type": "text"}])


@pytest.mark.parametrize(
    "name",
    ["../x.py", "/abs.py", "a/../../x.py", "sub/../x.py", "..", "/etc/passwd", "a\\b.py", "..\\x.py"],
)
def test_names_outside_the_app_are_rejected(name):
    with pytest.raises(ValueError, match="must be a relative path inside the app") as info:
        decode_files([{"name": name, "content": "x", "type": "text"}])
    assert name in str(info.value)


@pytest.mark.parametrize("name", ["", "   ", None, 5])
def test_files_need_a_name(name):
    with pytest.raises(ValueError, match=r"files\[0\]\.name: a file has no name"):
        decode_files([{"name": name, "content": "x", "type": "text"}])


def test_unknown_file_type_is_reported():
    with pytest.raises(
        ValueError, match=r"files\[0\]\.type \('a\.py'\) must be 'text' or 'base64', got 'hex'"
    ):
        decode_files([{"name": "a.py", "content": "00", "type": "hex"}])


def test_duplicate_names_are_reported():
    with pytest.raises(ValueError, match=r"files\[1\]\.name: 'a\.py' appears twice"):
        decode_files(
            [
                {"name": "a.py", "content": "x"},
                {"name": "a.py", "content": base64.b64encode(b"y").decode(), "type": "base64"},
            ]
        )


@pytest.mark.parametrize("files", [None, [], {}, "manifest.yaml", {"name": "a", "content": "x"}])
def test_files_must_be_a_non_empty_list(files):
    with pytest.raises(ValueError, match="files must be a non-empty list"):
        decode_files(files)


@pytest.mark.parametrize("entry", ["a.py", 5, None, ["a.py", "x"]])
def test_every_entry_must_be_a_dict(entry):
    with pytest.raises(ValueError, match=r"files\[1\] must be a dict"):
        decode_files([{"name": "ok.py", "content": ""}, entry])


def test_every_file_problem_is_reported_in_one_error():
    with pytest.raises(ValueError) as info:
        decode_files(
            [
                {"name": "../up.py", "content": "x"},
                {"name": "ok.py", "content": "x"},
                {"name": "b.bin", "content": "%%%", "type": "base64"},
                {"name": "c.py", "content": 1},
            ]
        )
    message = str(info.value)
    assert message.startswith("invalid app files: ")
    assert "files[0].name" in message and "files[2].content ('b.bin')" in message
    assert "files[3].content ('c.py')" in message
    assert "ok.py" not in message


def test_files_larger_than_the_limit_are_rejected(monkeypatch):
    monkeypatch.setattr(_manifest, "_MAX_FILE_BYTES", 4)
    assert decode_files([{"name": "small.txt", "content": "1234"}]) == {"small.txt": b"1234"}
    with pytest.raises(ValueError, match=r"files\[0\] \('big\.txt'\) is larger than"):
        decode_files([{"name": "big.txt", "content": "12345"}])


# ---- load_manifest ---------------------------------------------------------------------------------


def test_load_manifest_of_the_demo_app():
    manifest = load_manifest(read_app("demo-app"))
    assert manifest["id"] == "demo-app"
    assert manifest["type"] == "ray-serve"
    assert manifest["deployments"] == ["demo_app:DemoApp"]
    assert manifest["version"] == "1.0.0"
    assert manifest["authorized_users"] == {"*": ["*"], "read_env": []}
    assert manifest["format_version"] == "0.5.0"  # free metadata passes through


def test_load_manifest_of_the_composition_app():
    manifest = load_manifest(read_app("composition-app"))
    assert manifest["id"] == "composition-app"
    assert manifest["deployments"] == [
        "composition_deployment:CompositionDeployment",
        "deployment_1:Deployment1",
        "deployment_2:Deployment2",
    ]
    assert manifest["authorized_users"] == ["*"]


def test_load_manifest_checks_deployments_against_the_files():
    files = read_app("composition-app")
    del files["deployment_2.py"]
    with pytest.raises(ValueError, match=r"deployments\[2\]: the app has no file 'deployment_2\.py'"):
        load_manifest(files)


def test_load_manifest_accepts_manifest_yml_and_prefers_yaml():
    text = yaml.safe_dump(valid_manifest())
    files = {"manifest.yml": text.encode(), "demo_app.py": b""}
    assert load_manifest(files)["id"] == "demo-app"
    files["manifest.yaml"] = yaml.safe_dump(valid_manifest(id="other-app")).encode()
    assert load_manifest(files)["id"] == "other-app"


def test_load_manifest_without_a_manifest():
    with pytest.raises(ValueError, match=r"no manifest\.yaml"):
        load_manifest({"demo_app.py": b"", "Manifest.yaml": b""})


@pytest.mark.parametrize(
    "content",
    [b"name: [unclosed\n", b"id: demo\n  bad: indentation\n", b"key: 'open\n", b"\xff\xfe\x00garbage"],
)
def test_load_manifest_with_invalid_yaml(content):
    with pytest.raises(ValueError, match=r"^manifest\.yaml is not valid YAML"):
        load_manifest({"manifest.yaml": content})


@pytest.mark.parametrize("content", [b"", b"- a\n- b\n", b"just a string\n"])
def test_load_manifest_that_is_not_a_mapping(content):
    with pytest.raises(ValueError, match="manifest: must be a YAML mapping"):
        load_manifest({"manifest.yaml": content})


@pytest.mark.parametrize(("raw", "expected"), [("2", "2"), ("1.5", "1.5"), ("'1.0.0'", "1.0.0")])
def test_load_manifest_gives_the_version_as_a_string(raw, expected):
    text = yaml.safe_dump(valid_manifest()) + f"version: {raw}\n"
    manifest = load_manifest({"manifest.yaml": text.encode(), "demo_app.py": b""})
    assert manifest["version"] == expected


# ---- version_key -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("newer", "older"),
    [
        ("1.10.0", "1.9.0"),
        ("1.10", "1.9.9"),
        ("2.0.0", "1.99.99"),
        ("1.0.1", "1.0"),
        ("1.0.0.1", "1"),
        ("v2", "1.9"),
        ("v1.2", "1.1.9"),
        ("0.1", "0"),
        ("10", "9"),
    ],
)
def test_version_key_ordering(newer, older):
    new_key, old_key = version_key(newer), version_key(older)
    assert new_key is not None and old_key is not None
    assert new_key > old_key


@pytest.mark.parametrize(
    ("a", "b"),
    [("1.0", "1.0.0"), ("1", "1.0.0"), ("v2", "2.0.0"), ("v2", "2"), (" 1.2 ", "1.2"), ("0", "0.0")],
)
def test_version_key_equal_versions(a, b):
    assert version_key(a) == version_key(b)
    assert version_key(a) is not None


@pytest.mark.parametrize(
    "version", ["1.0.0-beta", "latest", "", "1..2", "1.", ".1", "V2", "abc", "1.0a", "1.0.0+build", "v"]
)
def test_version_key_non_numeric_is_none(version):
    assert version_key(version) is None


def test_version_key_sorts_a_list():
    versions = ["1.9.0", "1.10.0", "v0.9", "1.2", "2"]
    assert sorted(versions, key=lambda v: version_key(v) or ()) == ["v0.9", "1.2", "1.9.0", "1.10.0", "2"]


# ---- analyze_app -----------------------------------------------------------------------------------


HEADER = "from hypha_rpc.utils.schema import schema_method\nfrom ray import serve\n"


def py(source: str) -> bytes:
    """A deployment file: the usual imports, then ``source`` (dedented)."""
    return (HEADER + textwrap.dedent(source)).encode()


def test_analyze_demo_app():
    files = read_app("demo-app")
    analysis = analyze_app(files, load_manifest(files)["deployments"])
    assert analysis.problems == []
    assert analysis.entry_class == "DemoApp"
    assert analysis.methods == ["ping", "ascii_art", "read_env"]
    assert analysis.resources == {"num_cpus": pytest.approx(0.1), "num_gpus": 0.0, "memory": 0.0}


def test_analyze_composition_app():
    files = read_app("composition-app")
    analysis = analyze_app(files, load_manifest(files)["deployments"])
    assert analysis.problems == []
    assert analysis.entry_class == "CompositionDeployment"
    assert analysis.methods == ["ping", "calculate_result"]
    assert analysis.resources == {"num_cpus": pytest.approx(0.3), "num_gpus": 0.0, "memory": 0.0}
    assert set(analysis.classes) == {"CompositionDeployment", "Deployment1", "Deployment2"}


def test_analyze_composition_app_with_matching_kwargs():
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
def test_analyze_composition_app_with_bad_kwargs(kwargs, expected):
    files = read_app("composition-app")
    assert analyze_app(files, load_manifest(files)["deployments"], kwargs).problems == [expected]


def test_composition_entry_lacking_a_sub_deployment_parameter():
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


def test_resources_sum_over_deployments():
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


def test_syntax_error_is_reported_with_file_and_line():
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


def test_only_the_entry_needs_schema_methods():
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


def test_sub_deployment_handles_count_as_given_for_the_entry():
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


# ---- split_env_vars --------------------------------------------------------------------------------


def test_split_env_vars_separates_secrets():
    plain, secret, masked = split_env_vars(
        {"DemoApp": {"PLAIN": "p", "_API_KEY": "s3cret", "EMPTY": ""}, "*": {"SHARED": "1", "_TOKEN": "t0k"}}
    )
    assert plain == {"DemoApp": {"PLAIN": "p", "EMPTY": ""}, "*": {"SHARED": "1"}}
    assert secret == {"DemoApp": {"API_KEY": "s3cret"}, "*": {"TOKEN": "t0k"}}
    assert masked == {
        "DemoApp": {"PLAIN": "p", "_API_KEY": SECRET_MASK, "EMPTY": ""},
        "*": {"SHARED": "1", "_TOKEN": SECRET_MASK},
    }
    assert SECRET_MASK == "*****"
    assert "s3cret" not in json.dumps(masked) and "t0k" not in json.dumps([plain, masked])


def test_split_env_vars_strips_one_underscore():
    plain, secret, masked = split_env_vars({"App": {"__DOUBLE": "v"}})
    assert plain == {}
    assert secret == {"App": {"_DOUBLE": "v"}}
    assert masked == {"App": {"__DOUBLE": SECRET_MASK}}


@pytest.mark.parametrize("env_vars", [None, {}])
def test_split_env_vars_empty(env_vars):
    assert split_env_vars(env_vars) == ({}, {}, {})


def test_split_env_vars_scope_with_only_secrets_has_no_plain_entry():
    plain, secret, masked = split_env_vars({"App": {"_ONLY": "x"}})
    assert "App" not in plain
    assert secret == {"App": {"ONLY": "x"}}
    assert masked == {"App": {"_ONLY": SECRET_MASK}}


@pytest.mark.parametrize("name", ["PORT", "_TOKEN"])
@pytest.mark.parametrize("value", [5, None, True, 1.5, ["a"], {"a": "b"}, b"bytes"])
def test_split_env_vars_non_string_value_names_the_variable(name, value):
    with pytest.raises(ValueError) as info:
        split_env_vars({"DemoApp": {"OK": "fine", name: value}})
    assert f"application_env_vars.DemoApp.{name}" in str(info.value)
    assert "strings" in str(info.value)


@pytest.mark.parametrize("name", ["", "_", "__", 5, None])
def test_split_env_vars_bad_names(name):
    with pytest.raises(ValueError) as info:
        split_env_vars({"DemoApp": {name: "value"}})
    message = str(info.value)
    assert message.startswith("application_env_vars.DemoApp: invalid variable name")
    assert repr(name) in message


@pytest.mark.parametrize("variables", ["KEY=value", ["KEY"], 5, None])
def test_split_env_vars_scope_must_be_a_mapping(variables):
    with pytest.raises(ValueError, match=r"^application_env_vars\.DemoApp: must map names"):
        split_env_vars({"DemoApp": variables})


def test_split_env_vars_error_does_not_leak_the_secret_value():
    with pytest.raises(ValueError) as info:
        split_env_vars({"App": {"_KEY": 12345}})
    assert "12345" not in str(info.value)


# ---- resolve_authorized_users ----------------------------------------------------------------------

DEPLOYER = ["alice-id", "alice@example.org"]
ADMINS = ["admin@example.org"]
ALWAYS = [*DEPLOYER, *ADMINS]


@pytest.mark.parametrize(
    ("requested", "manifest_rule", "expected"),
    [
        # nothing anywhere: public
        (None, None, {"*": ["*"]}),
        # the manifest's rule when the deploy argument is absent
        (None, ["*"], {"*": ["*"]}),
        (None, {"*": ["*"], "read_env": []}, {"*": ["*"], "read_env": ALWAYS}),
        # the deploy argument beats the manifest
        (["bob"], ["*"], {"*": ["bob", *ALWAYS]}),
        ({"ping": ["*"]}, ["carol"], {"ping": ["*"], "*": ALWAYS}),
        ([], ["*"], {"*": ALWAYS}),
        ({}, {"*": ["*"]}, {"*": ALWAYS}),
        # list -> {'*': list}; a public rule is untouched
        (["*"], None, {"*": ["*"]}),
        (["*", "bob"], None, {"*": ["*", "bob"]}),
        (None, ["bob", "carol"], {"*": ["bob", "carol", *ALWAYS]}),
        # non-public rules get the deployer and admins, without duplicates
        (
            ["admin@example.org", "alice-id", "bob", "bob"],
            None,
            {"*": ["admin@example.org", "alice-id", "bob", "alice@example.org"]},
        ),
        # a missing '*' rule is added with only the deployer and admins
        ({"ping": ["bob"]}, None, {"ping": ["bob", *ALWAYS], "*": ALWAYS}),
        (
            {"ping": ["*"], "read_env": ["bob"]},
            None,
            {"ping": ["*"], "read_env": ["bob", *ALWAYS], "*": ALWAYS},
        ),
    ],
)
def test_resolve_authorized_users(requested, manifest_rule, expected):
    assert resolve_authorized_users(requested, manifest_rule, DEPLOYER, ADMINS) == expected


def test_resolve_authorized_users_skips_empty_ids_and_does_not_mutate_inputs():
    requested = {"ping": ["bob"]}
    manifest_rule = ["carol"]
    rules = resolve_authorized_users(requested, manifest_rule, ["", "alice-id"], ["", "admin"])
    assert rules == {"ping": ["bob", "alice-id", "admin"], "*": ["alice-id", "admin"]}
    assert requested == {"ping": ["bob"]} and manifest_rule == ["carol"]
    rules["ping"].append("mallory")
    assert requested["ping"] == ["bob"]


def test_resolve_authorized_users_without_deployer_or_admins():
    assert resolve_authorized_users(["bob"], None, [], []) == {"*": ["bob"]}
    assert resolve_authorized_users({"ping": ["bob"]}, None, (), ()) == {"ping": ["bob"], "*": []}


# ---- records, spec hashes and plan ----------------------------------------------------------------


def spec(app_id: str, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "application_id": app_id,
        "artifact_id": f"ws/{app_id}-artifact",
        "code_dir": f"/shared/apps/{app_id}/code/abc123",
        "home_dir": f"/shared/apps/{app_id}/home",
        "deployments": ["demo_app:DemoApp"],
        "server_url": "http://hypha.test",
        "workspace": "ws",
    }
    base.update(changes)
    return AppSpec.model_validate(base).model_dump(mode="json")


def record(app_id: str = "app-a", spec_changes: dict[str, Any] | None = None, **fields: Any) -> AppRecord:
    return AppRecord(
        application_id=app_id,
        artifact_id=f"ws/{app_id}-artifact",
        spec=spec(app_id, **(spec_changes or {})),
        **fields,
    )


def applied(app_id: str = "app-a", spec_changes: dict[str, Any] | None = None, **fields: Any) -> AppRecord:
    """A record whose current spec Serve already has."""
    rec = record(app_id, spec_changes, **fields)
    rec.applied_hash = spec_hash(rec.spec)
    return rec


def ours(status: str = "RUNNING") -> ObservedApp:
    return ObservedApp(status=status, ours=True)


def test_spec_hash_fills_defaults_and_ignores_key_order():
    full = spec("app-a")
    partial = {k: v for k, v in full.items() if k not in ("redeploy", "disable_gpu", "methods")}
    assert spec_hash(partial) == spec_hash(full) == spec_hash(dict(reversed(list(full.items()))))
    assert spec_hash(spec("app-a", init_kwargs={"DemoApp": {"x": 1}})) != spec_hash(full)
    assert spec_hash(spec("app-a", redeploy=1)) != spec_hash(full)


def test_plan_nothing_to_do():
    assert plan({}, {}, now=0.0) == Plan()
    rec = applied("app-a")
    result = plan({"app-a": rec}, {"app-a": ours()}, now=0.0)
    assert result.deploy == [] and result.delete == [] and result.decisions == []


def test_plan_recorded_app_missing_from_serve_is_deployed():
    result = plan({"app-a": applied("app-a")}, {}, now=0.0)
    assert result.deploy == ["app-a"] and result.redeploy == []
    assert result.decisions == ["app-a: not in Serve -> deploy"]


def test_plan_never_applied_record_is_deployed():
    result = plan({"app-a": record("app-a")}, {}, now=0.0)
    assert result.deploy == ["app-a"]


@pytest.mark.parametrize(
    "changes",
    [
        {"init_kwargs": {"DemoApp": {"x": 1}}},
        {"env_vars": {"*": {"A": "b"}}},
        {"code_dir": "/new"},
        {"secrets_revision": 3},
    ],
)
def test_plan_changed_spec_is_deployed(changes):
    rec = applied("app-a")
    rec.spec = spec("app-a", **changes)
    result = plan({"app-a": rec}, {"app-a": ours()}, now=0.0)
    assert result.deploy == ["app-a"] and result.decisions == ["app-a: spec changed -> deploy"]


@pytest.mark.parametrize("status", ["RUNNING", "DEPLOYING", "DEPLOY_FAILED", "UNHEALTHY"])
def test_plan_applied_spec_is_left_alone_without_auto_redeploy(status):
    result = plan({"app-a": applied("app-a")}, {"app-a": ours(status)}, now=0.0)
    assert result.deploy == [] and result.decisions == []


def test_plan_a_failed_build_is_not_retried_in_a_loop():
    rec = record("app-a", last_error="ImportError: no module named torch")
    rec.failed_hash = spec_hash(rec.spec)
    result = plan({"app-a": rec}, {}, now=0.0)
    assert result.deploy == [] and result.decisions == []
    rec.spec = spec("app-a", init_kwargs={"DemoApp": {"x": 2}})  # a new spec is tried again
    assert plan({"app-a": rec}, {}, now=0.0).deploy == ["app-a"]


@pytest.mark.parametrize("status", ["RUNNING", "DEPLOY_FAILED", "UNHEALTHY", "DEPLOYING"])
def test_plan_our_app_without_record_is_deleted(status):
    result = plan({}, {"orphan": ours(status)}, now=100.0)
    assert result.delete == ["orphan"]
    assert result.decisions == ["orphan: in Serve without a record -> delete"]


def test_plan_does_not_repeat_a_removal_serve_is_doing():
    result = plan({}, {"orphan": ours("DELETING")}, now=100.0)
    assert result.delete == [] and result.decisions == []


@pytest.mark.parametrize("status", ["RUNNING", "DEPLOY_FAILED", "UNHEALTHY"])
def test_plan_foreign_app_is_untouched(status):
    result = plan(
        {"app-a": applied("app-a")}, {"app-a": ours(), "foreign": ObservedApp(status=status)}, now=1.0
    )
    assert result == Plan()


@pytest.mark.parametrize("status", ["DEPLOY_FAILED", "UNHEALTHY"])
def test_plan_auto_redeploy_waits_for_the_backoff(status):
    rec = applied("app-a", auto_redeploy=True, redeploy_attempts=2, next_redeploy_at=1000.0)
    assert plan({"app-a": rec}, {"app-a": ours(status)}, now=999.0).deploy == []
    result = plan({"app-a": rec}, {"app-a": ours(status)}, now=1000.0)
    assert result.deploy == ["app-a"] and result.redeploy == ["app-a"]
    assert result.decisions == [f"app-a: {status} -> auto-redeploy attempt 3"]


def test_plan_auto_redeploy_retries_a_failed_build_with_backoff():
    rec = record("app-a", auto_redeploy=True, last_error="boom", next_redeploy_at=10.0)
    rec.failed_hash = spec_hash(rec.spec)
    assert plan({"app-a": rec}, {}, now=5.0).deploy == []
    result = plan({"app-a": rec}, {}, now=10.0)
    assert result.redeploy == ["app-a"] and result.decisions == [
        "app-a: BUILD_FAILED -> auto-redeploy attempt 1"
    ]


def test_plan_first_auto_redeploy_is_immediate():
    rec = applied("app-a", auto_redeploy=True)
    assert plan({"app-a": rec}, {"app-a": ours("UNHEALTHY")}, now=0.0).redeploy == ["app-a"]


@pytest.mark.parametrize("attempts", [5, 6, 9])
@pytest.mark.parametrize("status", ["DEPLOY_FAILED", "UNHEALTHY"])
def test_plan_gives_up_at_the_cap(attempts, status):
    rec = applied("app-a", auto_redeploy=True, redeploy_attempts=attempts)
    result = plan({"app-a": rec}, {"app-a": ours(status)}, now=1e9)
    assert result.deploy == [] and result.give_up == {
        "app-a": f"gave up after {attempts} redeploys (still {status})"
    }


def test_plan_one_below_the_cap_still_redeploys():
    rec = applied("app-a", auto_redeploy=True, redeploy_attempts=4)
    assert plan({"app-a": rec}, {"app-a": ours("DEPLOY_FAILED")}, now=1e9).redeploy == ["app-a"]


def test_plan_after_giving_up_does_nothing():
    rec = applied("app-a", auto_redeploy=True, redeploy_attempts=5, gave_up="gave up")
    assert plan({"app-a": rec}, {"app-a": ours("DEPLOY_FAILED")}, now=1e9) == Plan()


@pytest.mark.parametrize("auto_redeploy", [True, False])
def test_plan_running_again_resets_the_attempts(auto_redeploy):
    rec = applied("app-a", auto_redeploy=auto_redeploy, redeploy_attempts=3)
    assert plan({"app-a": rec}, {"app-a": ours("RUNNING")}, now=0.0).reset_attempts == ["app-a"]


@pytest.mark.parametrize("status", ["DEPLOYING", "UNHEALTHY"])
def test_plan_no_reset_while_not_running(status):
    rec = applied("app-a", auto_redeploy=True, redeploy_attempts=3, next_redeploy_at=1e12)
    assert plan({"app-a": rec}, {"app-a": ours(status)}, now=0.0).reset_attempts == []


def test_plan_failed_app_with_a_new_spec_is_updated_not_redeployed():
    rec = applied("app-a", auto_redeploy=True)
    rec.spec = spec("app-a", init_kwargs={"DemoApp": {"x": 9}})
    result = plan({"app-a": rec}, {"app-a": ours("DEPLOY_FAILED")}, now=0.0)
    assert result.deploy == ["app-a"] and result.redeploy == []


def test_plan_many_apps_at_once():
    records = {
        "ok": applied("ok"),
        "missing": applied("missing"),
        "flaky": applied("flaky", auto_redeploy=True, redeploy_attempts=1, next_redeploy_at=50.0),
        "hopeless": applied("hopeless", auto_redeploy=True, redeploy_attempts=5),
        "healed": applied("healed", auto_redeploy=True, redeploy_attempts=2),
    }
    observed = {
        "ok": ours(),
        "flaky": ours("UNHEALTHY"),
        "hopeless": ours("DEPLOY_FAILED"),
        "healed": ours("RUNNING"),
        "orphan": ours("RUNNING"),
        "foreign": ObservedApp(status="RUNNING"),
    }
    result = plan(records, observed, now=100.0)
    assert result.deploy == ["flaky", "missing"] and result.redeploy == ["flaky"]
    assert result.delete == ["orphan"]
    assert result.give_up == {"hopeless": "gave up after 5 redeploys (still DEPLOY_FAILED)"}
    assert result.reset_attempts == ["healed"]
    assert result.decisions == [
        "flaky: UNHEALTHY -> auto-redeploy attempt 2",
        "hopeless: gave up after 5 redeploys (still DEPLOY_FAILED)",
        "missing: not in Serve -> deploy",
        "orphan: in Serve without a record -> delete",
    ]


@pytest.mark.parametrize(
    ("attempts", "delay"), [(0, 10.0), (1, 20.0), (2, 40.0), (4, 160.0), (5, 300.0), (20, 300.0)]
)
def test_redeploy_delay_doubles_up_to_five_minutes(attempts, delay):
    assert redeploy_delay(attempts) == delay


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"DemoApp": {"A=B": "x"}}, "invalid variable name 'A=B'"),
        ({"DemoApp": {"1X": "x"}}, "invalid variable name '1X'"),
        ({"DemoApp": {"KEY": "a", "_KEY": "b"}}, "'KEY' and '_KEY' set the same variable"),
    ],
)
def test_split_env_vars_rejects_ambiguous_names(env, error):
    with pytest.raises(ValueError, match=error):
        split_env_vars(env)


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


def test_authorized_users_argument_is_checked_like_the_manifest():
    from bioengine_apps._manifest import check_authorized_users

    assert check_authorized_users(["*"]) == [] and check_authorized_users({"ping": ["a@b.c"]}) == []
    assert check_authorized_users({"ping": "alice"}) == [
        "authorized_users.ping: must be a list of user ids or emails"
    ]
    assert check_authorized_users("alice")


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
