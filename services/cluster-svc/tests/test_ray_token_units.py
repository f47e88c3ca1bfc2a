"""The Ray token without a cluster: the token file, the scrubbed environments, the job script,
what sbatch is given, and the settings that name the file."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from bioengine_cluster._backends import ExternalBackend, LocalHeadBackend
from bioengine_cluster._settings import ClusterSettings
from bioengine_cluster.slurm import SlurmCommands, SlurmSettings, render_job_script
from bioengine_common import (
    ConfigurationError,
    build_parser,
    check_token_file,
    connect_driver,
    ray_environment,
    scrub_environment,
)
from bioengine_common.local_stack import HeadOptions, ensure_token_file


def test_a_token_file_is_created_once_private_and_reused(tmp_path):
    path = tmp_path / "ws" / "ray" / "auth_token"
    assert ensure_token_file(path) == path.resolve()
    token = path.read_text()
    assert len(token) == 64 and int(token, 16) >= 0  # 256 random bits in hex
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert ensure_token_file(path) == path.resolve() and path.read_text() == token
    assert ensure_token_file(tmp_path / "other") != path and (tmp_path / "other").read_text() != token


@pytest.mark.parametrize(
    ("mode", "content", "problem"),
    [
        (0o644, "abc", r"accessible to other users \(mode 0644\); allow only its owner: chmod 600"),
        (0o640, "abc", r"accessible to other users \(mode 0640\)"),
        (0o602, "abc", r"accessible to other users \(mode 0602\)"),
        (0o600, "", "is empty"),
        (0o600, "  \n", "is empty"),
        (0o600, "two words", "one token of printable ASCII"),
    ],
)
def test_bad_token_files_are_refused_by_name_without_their_content(tmp_path, mode, content, problem):
    path = tmp_path / "auth_token"
    path.write_text(content)
    path.chmod(mode)
    with pytest.raises(ConfigurationError, match=problem) as error:
        check_token_file(path)
    assert str(path) in str(error.value)
    if content.strip():
        assert content not in str(error.value)
    # ensure_token_file keeps an existing file, so it refuses the same way
    with pytest.raises(ConfigurationError, match=problem):
        ensure_token_file(path)


def test_missing_relative_or_odd_token_paths_are_refused(tmp_path):
    with pytest.raises(ConfigurationError, match=f"the Ray token file {tmp_path / 'nope'} does not exist"):
        check_token_file(tmp_path / "nope")
    with pytest.raises(ConfigurationError, match="absolute path"):
        check_token_file(Path("relative/token"))
    with pytest.raises(ConfigurationError, match="not a regular file"):
        check_token_file(tmp_path)
    token = tmp_path / "ok"
    token.write_text("a" * 64 + "\n")
    token.chmod(0o600)
    assert check_token_file(token) == token


def test_ray_environment_is_always_explicit_and_carries_only_the_path(tmp_path):
    assert ray_environment()["RAY_AUTH_MODE"] == "disabled" and "RAY_AUTH_TOKEN_PATH" not in ray_environment()
    env = ray_environment(token_file=tmp_path / "t")
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == str(tmp_path / "t")
    assert "RAY_AUTH_TOKEN" not in env


def test_the_environment_ray_inherits_has_no_secrets():
    env = {
        "PATH": "/usr/bin",
        "HOME": "/home/u",
        "BIOENGINE_TOKEN": "hypha-secret",
        "BIOENGINE_WORKSPACE": "ws",
        "HYPHA_TOKEN": "hypha-secret",
        "HYPHA_SERVER_URL": "http://x",
        "RAY_AUTH_TOKEN": "ray-secret",
        "RAY_AUTH_TOKEN_PATH": "/ws/ray/auth_token",
        "RAY_USAGE_STATS_ENABLED": "0",
        "AWS_SECRET_ACCESS_KEY": "s3-secret",
        "GITHUB_TOKEN": "gh-secret",
        "DB_PASSWORD": "pw",
        "OPENAI_API_KEY": "key",
        "SLURM_CONF": "/etc/slurm/slurm.conf",
    }
    assert scrub_environment(env) == {
        "PATH": "/usr/bin",
        "HOME": "/home/u",
        "RAY_AUTH_TOKEN_PATH": "/ws/ray/auth_token",
        "RAY_USAGE_STATS_ENABLED": "0",
        "SLURM_CONF": "/etc/slurm/slurm.conf",
    }


def test_ray_client_addresses_cannot_take_a_token(tmp_path):
    token = ensure_token_file(tmp_path / "auth_token")
    with pytest.raises(ConfigurationError, match="Ray Client does not work under token authentication"):
        connect_driver("ray://127.0.0.1:10001", timeout=5, token_file=token)
    backend = ExternalBackend("ray://127.0.0.1:10001", token)
    with pytest.raises(ConfigurationError, match="--ray-token-file cannot be used with the Ray Client"):
        backend.start()
    # a bad token file is named before any connection is tried
    loose = tmp_path / "loose"
    loose.write_text("x" * 64)
    loose.chmod(0o644)
    with pytest.raises(ConfigurationError, match=f"{loose} is accessible to other users"):
        ExternalBackend("127.0.0.1:1", loose).start()
    with pytest.raises(ConfigurationError, match=f"{loose} is accessible to other users"):
        connect_driver("127.0.0.1:1", timeout=5, token_file=loose)


def test_settings_name_the_token_file(tmp_path):
    ws = tmp_path / "ws"
    for mode in ("single-machine", "slurm"):
        settings = ClusterSettings(mode=mode, workspace_dir=ws)
        assert settings.resolved_ray_token_file() == (ws / "ray" / "auth_token").resolve()
    assert ClusterSettings(mode="external-cluster", workspace_dir=ws).resolved_ray_token_file() is None
    given = ClusterSettings(mode="external-cluster", ray_token_file=tmp_path / "t")
    assert given.resolved_ray_token_file() == (tmp_path / "t").resolve()
    text = build_parser(ClusterSettings, "bioengine-cluster", "").format_help()
    assert "--ray-token-file" in text and "<workspace-dir>/ray/auth_token" in text and "0600" in text


def test_a_local_head_backend_makes_its_token_file(tmp_path):
    path = tmp_path / "ws" / "ray" / "auth_token"
    backend = LocalHeadBackend("single-machine", tmp_path / "t", HeadOptions(), logging.getLogger(), path)
    assert backend.token_file == path.resolve() and backend.auth_mode == "token"
    assert backend.head.token_file == path.resolve() and stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_job_script_names_the_token_file_never_the_token(tmp_path):
    token_file = ensure_token_file(tmp_path / "auth_token")
    token = token_file.read_text()
    base = dict(tag="abc", head_address="10.0.0.1:6379")
    script = render_job_script(SlurmSettings(**base, ray_token_file=str(token_file)))
    assert token not in script
    assert "export RAY_AUTH_MODE=token" in script and f"export RAY_AUTH_TOKEN_PATH={token_file}" in script
    assert f"if [ ! -r {token_file} ]" in script and "unset RAY_AUTH_TOKEN" in script
    assert "BIOENGINE_*|HYPHA_*) unset" in script
    with_image = render_job_script(
        SlurmSettings(**base, ray_token_file=str(token_file), apptainer_image="/i.sif")
    )
    assert f"--bind {token_file}:{token_file}:ro /i.sif ray start" in with_image
    plain = render_job_script(SlurmSettings(**base))
    assert "export RAY_AUTH_MODE=disabled" in plain and "RAY_AUTH_TOKEN_PATH" not in plain


def _fake_sbatch(tmp_path: Path) -> Path:
    """An `sbatch` that writes the environment it was given and answers with a job id."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f"#!/bin/sh\nenv > {tmp_path / 'sbatch.env'}\ncat > /dev/null\necho 4242\n")
    sbatch.chmod(0o755)
    return bin_dir


async def test_sbatch_gets_no_secret_to_export_to_the_job(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOENGINE_TOKEN", "s3cr3t-value-1")
    monkeypatch.setenv("HYPHA_TOKEN", "s3cr3t-value-2")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "s3cr3t-value-3")
    monkeypatch.setenv("BIOENGINE_SOMETHING_PLAIN", "x")
    commands = SlurmCommands("abc", bin_dir=str(_fake_sbatch(tmp_path)))
    assert await commands.submit("#!/bin/bash\ntrue\n") == "4242"
    names = {line.split("=", 1)[0] for line in (tmp_path / "sbatch.env").read_text().splitlines()}
    assert "PATH" in names and not any(n.startswith(("BIOENGINE_", "HYPHA_")) for n in names), names
    assert "RAY_AUTH_TOKEN" not in names
    assert "s3cr3t-value" not in (tmp_path / "sbatch.env").read_text()
    assert os.environ["BIOENGINE_TOKEN"] == "s3cr3t-value-1"  # our own environment is untouched
