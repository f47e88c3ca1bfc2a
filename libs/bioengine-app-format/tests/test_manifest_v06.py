"""Manifest format 0.6.0 beside the current format: the rules in the public worker's order, each
problem naming its field and line, the format picked from the manifest, the typed result and the
version rules of uploads. Pure."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from bioengine_app_format import (
    FORMAT_05,
    FORMAT_06,
    AppFormatError,
    AppManifest,
    format_version_of,
    load_app_manifest,
    load_manifest,
    validate_manifest_06,
    version_action,
)

_DROP = object()


def manifest_06(**changes: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "format_version": "0.6.0",
        "name": "Hello",
        "id": "hello-06",
        "id_emoji": "👋",
        "description": "A demo.",
        "type": "ray-serve",
        "version": "1.0.0",
        "entry": "hello:HelloApp",
    }
    manifest.update(changes)
    return {k: v for k, v in manifest.items() if v is not _DROP}


def files_of(manifest: dict[str, Any] | str, **files: bytes) -> dict[str, bytes]:
    text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest, sort_keys=False)
    return {"manifest.yaml": text.encode(), **files}


def problems_of(manifest: dict[str, Any] | str) -> list[str]:
    with pytest.raises(AppFormatError) as info:
        load_app_manifest(files_of(manifest))
    return [str(p) for p in info.value.problems]


# ---- the rules, in order ---------------------------------------------------------------------------


def test_a_valid_manifest_has_no_problems():
    assert validate_manifest_06(manifest_06()) == []
    assert validate_manifest_06(manifest_06(frontend_entry="index.html"), ["index.html"]) == []


def test_the_rules_run_in_the_public_workers_order_and_all_are_reported():
    manifest = manifest_06(
        deployments=["a:A"], name=_DROP, id_emoji=_DROP, type="docker", entry="Demo:app", version=_DROP
    )
    fields = [field for field, _ in validate_manifest_06(manifest)]
    assert fields == ["deployments", "name", "id_emoji", "type", "entry", "version"]


@pytest.mark.parametrize("field", ["name", "id", "id_emoji", "description", "type", "entry"])
@pytest.mark.parametrize("missing", [_DROP, None, ""])
def test_each_required_field_is_named(field, missing):
    assert validate_manifest_06(manifest_06(**{field: missing})) == [(field, f"{field} is required")]


def test_type_must_be_ray_serve():
    assert validate_manifest_06(manifest_06(type="docker")) == [
        ("type", "type must be 'ray-serve', got 'docker'")
    ]


@pytest.mark.parametrize(
    "entry", ["demo:app", "Demo:App", "demo.App", "demo:", ":App", "demo..sub:App", "1demo:App", "de-mo:App"]
)
def test_entry_must_look_like_module_colon_class(entry):
    assert validate_manifest_06(manifest_06(entry=entry)) == [
        ("entry", f"entry {entry!r} must look like 'module.sub:ClassName'")
    ]


@pytest.mark.parametrize("entry", ["hello:HelloApp", "pkg.sub.mod:Entry", "_private:App", "a1.b_2:X9"])
def test_dotted_entries_are_accepted(entry):
    assert validate_manifest_06(manifest_06(entry=entry)) == []


def test_the_error_names_the_file_the_line_and_the_field():
    text = yaml.safe_dump(manifest_06(entry="demo:app"), sort_keys=False)
    line = text.splitlines().index("entry: demo:app") + 1
    assert problems_of(text) == [
        f"manifest.yaml:{line}: entry 'demo:app' must look like 'module.sub:ClassName'"
    ]
    with pytest.raises(ValueError, match=rf"^manifest\.yaml:{line}: entry 'demo:app' must look like"):
        load_manifest(files_of(text))


def test_a_deployments_key_is_explained():
    (problem,) = problems_of(manifest_06(deployments=["hello:HelloApp"]))
    assert problem.startswith("manifest.yaml:9: deployments is the older format's list")
    assert "entry: 'module:ClassName'" in problem


@pytest.mark.parametrize("version", ["1.0.0", "2", "0.1.0rc1", "1.0.post2", "2024.1"])
def test_pep_440_versions_are_accepted(version):
    assert validate_manifest_06(manifest_06(version=version)) == []


@pytest.mark.parametrize("version", ["latest", "1.0.0-beta.x", "v1..2", True])
def test_a_version_that_is_not_pep_440_is_named(version):
    ((field, message),) = validate_manifest_06(manifest_06(version=version))
    assert field == "version" and "not a PEP 440 version" in message


def test_version_is_required():
    assert validate_manifest_06(manifest_06(version=_DROP)) == [
        ("version", "version is required (a PEP 440 version such as '1.0.0')")
    ]


@pytest.mark.parametrize("app_id", ["Hello", "hello_06", "ws/hello", "hello--06"])
def test_id_must_be_an_artifact_alias(app_id):
    ((field, message),) = validate_manifest_06(manifest_06(id=app_id))
    assert field == "id" and repr(app_id) in message


def test_authorized_users_and_frontend_entry_are_checked():
    problems = validate_manifest_06(
        manifest_06(authorized_users={"ping": "alice"}, frontend_entry="web/index.html"), ["hello.py"]
    )
    assert problems == [
        ("authorized_users", "authorized_users.ping: must be a list of user ids or emails"),
        ("frontend_entry", "frontend_entry 'web/index.html' is not a file of the app"),
    ]


def test_other_keys_are_free_metadata():
    assert validate_manifest_06(manifest_06(tags=["x"], license="MIT", authors=[{"name": "a"}])) == []


# ---- which format --------------------------------------------------------------------------------


def test_a_0_6_0_manifest_gives_the_typed_result():
    app = load_app_manifest(files_of(manifest_06(version=1.5, authorized_users=["*"])))
    assert isinstance(app, AppManifest)
    assert (app.format_version, app.entry, app.deployments) == (FORMAT_06, "hello:HelloApp", ())
    assert (app.id, app.name, app.version, app.authorized_users) == ("hello-06", "Hello", "1.5", ["*"])
    assert app.manifest["version"] == "1.5" and app.lines["entry"] == 8 and app.file == "manifest.yaml"


def test_the_current_format_gives_the_typed_result(read_app):
    app = load_app_manifest(read_app("composition-app"))
    assert app.format_version == FORMAT_05 and app.entry is None
    assert app.deployments[0] == "composition_deployment:CompositionDeployment" and app.version == "1.0.0"
    assert load_manifest(read_app("composition-app")) == app.manifest


def test_the_current_format_without_format_version_is_read_as_0_5_0():
    manifest = {k: v for k, v in manifest_06().items() if k not in ("format_version", "entry")}
    app = load_app_manifest(files_of({**manifest, "deployments": ["hello:HelloApp"]}, **{"hello.py": b""}))
    assert app.format_version == FORMAT_05 and app.deployments == ("hello:HelloApp",)


def test_its_problems_keep_todays_messages_and_get_lines():
    text = "name: x\nid: Bad_Id\nid_emoji: x\ndescription: x\ntype: ray-serve\ndeployments: [a:A]\n"
    with pytest.raises(AppFormatError) as info:
        load_app_manifest(files_of(text))
    assert str(info.value) == (
        "invalid manifest.yaml: id: 'Bad_Id' must be lowercase letters, digits and single hyphens (no "
        "underscores or slashes); deployments[0]: the app has no file 'a.py'"
    )
    assert [p.line for p in info.value.problems] == [2, 6]


def test_entry_without_format_version_says_what_is_missing():
    manifest = manifest_06(format_version=_DROP)
    problems = problems_of(manifest)
    assert "manifest.yaml: deployments: required" in problems
    assert any("'entry' belongs to format 0.6.0; add format_version: 0.6.0" in p for p in problems)


@pytest.mark.parametrize("version", ["1.0", "0.7.0", 0.6])
def test_an_unknown_format_version_is_refused(version):
    (problem,) = problems_of(manifest_06(format_version=version))
    assert f"format_version {version!r} is not supported" in problem and problem.startswith(
        "manifest.yaml:1:"
    )


def test_invalid_yaml_names_its_line():
    with pytest.raises(AppFormatError, match=r"^manifest\.yaml is not valid YAML") as info:
        load_app_manifest({"manifest.yaml": b"name: x\nid: [unclosed\n"})
    assert info.value.problems[0].line is not None


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [({"format_version": "0.6.0"}, "0.6.0"), ({"deployments": []}, "0.5.0"), (None, "0.5.0"),
     ({"format_version": "0.5.0"}, "0.5.0")],
)  # fmt: skip
def test_format_version_of_a_stored_manifest(manifest, expected):
    assert format_version_of(manifest) == expected


# ---- versions of uploads -----------------------------------------------------------------------------


def app_06(version: str) -> AppManifest:
    return load_app_manifest(files_of(manifest_06(version=version)))


def test_0_6_0_versions_only_go_up():
    assert version_action(app_06("1.1.0"), ["1.0.0"], "ws/hello-06") == "new"
    assert version_action(app_06("1.10"), ["1.0", "1.9"], "ws/hello-06") == "new"
    assert version_action(app_06("1.0.0"), [], "ws/hello-06") == "new"
    for same in ("1.0.0", "1.0"):  # PEP 440 equal
        with pytest.raises(ValueError, match="exists already"):
            version_action(app_06(same), ["1.0.0"], "ws/hello-06")
    with pytest.raises(ValueError, match=r"older than the latest \(2\.0\.0rc1\)"):
        version_action(app_06("1.9"), ["1.0.0", "2.0.0rc1"], "ws/hello-06")


def test_current_format_versions_keep_todays_rules(read_app):
    app = load_app_manifest(read_app("demo-app"))  # version 1.0.0
    assert version_action(app, ["1.0.0"], "ws/demo-app") == "in_place"
    assert version_action(app, ["0.9.0"], "ws/demo-app") == "new"
    with pytest.raises(ValueError, match="older than the latest"):
        version_action(app, ["1.0.0", "1.1.0"], "ws/demo-app")
    with pytest.raises(ValueError, match="older than the latest"):
        version_action(app, ["2.0.0"], "ws/demo-app")
