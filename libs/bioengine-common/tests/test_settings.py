from pathlib import Path

import pytest
from pydantic import Field

from bioengine_common import ServiceSettings, load_settings


class Demo(ServiceSettings):
    head_num_cpus: float = 1.0


def load(argv=(), env=None):
    return load_settings(Demo, list(argv), prog="demo", description="d", environ=env or {})


def test_defaults_are_documented_and_valid():
    settings = load()
    assert settings.server_url == "http://127.0.0.1:9527"
    assert settings.workspace_dir == Path("~/.bioengine")
    for name, field in ServiceSettings.model_fields.items():
        assert field.description, f"{name} has no description"


def test_flag_beats_environment_beats_default():
    env = {"BIOENGINE_WORKSPACE": "from-env", "BIOENGINE_HEAD_NUM_CPUS": "3"}
    assert load(env=env).workspace == "from-env"
    assert load(env=env).head_num_cpus == 3.0
    assert load(["--workspace", "from-flag"], env).workspace == "from-flag"


def test_lists_and_booleans():
    assert load(env={"BIOENGINE_ADMIN_USERS": "a@example.org, b"}).admin_users == ["a@example.org", "b"]
    assert load(env={"BIOENGINE_ADMIN_USERS": '["x y"]'}).admin_users == ["x y"]
    assert load(["--admin-users", "u1", "u2"]).admin_users == ["u1", "u2"]
    assert load(["--debug"]).debug is True
    assert load(["--no-debug"], {"BIOENGINE_DEBUG": "true"}).debug is False


def test_token_is_secret():
    settings = load(env={"BIOENGINE_TOKEN": "eyJabc.def.ghi"})
    assert settings.token_value() == "eyJabc.def.ghi"
    assert "eyJabc" not in repr(settings)


def test_log_file_resolution(tmp_path):
    assert load(["--workspace-dir", str(tmp_path)]).resolved_log_file("x") == tmp_path / "logs" / "x.log"
    assert load(["--log-file", "off"]).resolved_log_file("x") is None


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--reconnect-timeout", "-1"], {}, "--reconnect-timeout"),
        (["--head-num-cpus", "many"], {}, "--head-num-cpus"),
        ([], {"BIOENGINE_DEBUG": "perhaps"}, "--debug"),
        (["--telemetry-exporter", "zipkin"], {}, "invalid choice"),
        ([], {"BIOENGINE_ADMIN_USERS": "[1"}, "BIOENGINE_ADMIN_USERS"),
    ],
)
def test_bad_values_are_usage_errors_naming_the_setting(argv, env, message, capsys):
    with pytest.raises(SystemExit) as info:
        load(argv, env)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_renders_descriptions_with_percent_signs(capsys):
    class Percent(ServiceSettings):
        share: float = Field(0.3, description="Fraction (30% of RAM).")

    with pytest.raises(SystemExit):
        load_settings(Percent, ["--help"], prog="p", description="d", environ={})
    assert "30% of RAM" in capsys.readouterr().out
