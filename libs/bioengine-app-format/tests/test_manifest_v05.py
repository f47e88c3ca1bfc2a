"""The current format (deployments:): validate_manifest, decode_files, load_manifest,
version_key and the authorized_users argument. Pure: no Ray, no Hypha."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import yaml

from bioengine_app_format import (
    REQUIRED_FIELDS,
    _manifest,
    decode_files,
    load_manifest,
    validate_manifest,
    version_key,
)

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


def test_load_manifest_of_the_demo_app(read_app):
    manifest = load_manifest(read_app("demo-app"))
    assert manifest["id"] == "demo-app"
    assert manifest["type"] == "ray-serve"
    assert manifest["deployments"] == ["demo_app:DemoApp"]
    assert manifest["version"] == "1.0.0"
    assert manifest["authorized_users"] == {"*": ["*"], "read_env": []}
    assert manifest["format_version"] == "0.5.0"  # free metadata passes through


def test_load_manifest_of_the_composition_app(read_app):
    manifest = load_manifest(read_app("composition-app"))
    assert manifest["id"] == "composition-app"
    assert manifest["deployments"] == [
        "composition_deployment:CompositionDeployment",
        "deployment_1:Deployment1",
        "deployment_2:Deployment2",
    ]
    assert manifest["authorized_users"] == ["*"]


def test_load_manifest_checks_deployments_against_the_files(read_app):
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


def test_authorized_users_argument_is_checked_like_the_manifest():
    from bioengine_app_format import check_authorized_users

    assert check_authorized_users(["*"]) == [] and check_authorized_users({"ping": ["a@b.c"]}) == []
    assert check_authorized_users({"ping": "alice"}) == [
        "authorized_users.ping: must be a list of user ids or emails"
    ]
    assert check_authorized_users("alice")
