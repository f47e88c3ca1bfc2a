"""The Apptainer definition files and the login-node launcher, checked without Apptainer.

Apptainer cannot be installed on the development and CI machines, so the images are not built
here: these tests parse each ``infra/apptainer/*.def`` (header and sections) and check it against
the OCI image it bootstraps from (``infra/containers/<name>.Containerfile``: the member it syncs,
the console script it runs) and the workspace, check ``save-images.sh`` (which writes the
archives the definitions read), and run ``infra/slurm/start-worker.sh --dry-run`` with stand-in
commands.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APPTAINER_DIR = ROOT / "infra" / "apptainer"
CONTAINERS_DIR = ROOT / "infra" / "containers"
SAVE_IMAGES = APPTAINER_DIR / "save-images.sh"
START_WORKER = ROOT / "infra" / "slurm" / "start-worker.sh"

#: definition file -> (workspace member synced, command its runscript exec's); None: all packages.
IMAGES: dict[str, tuple[str | None, str]] = {
    "cluster-svc": ("cluster-svc", "bioengine-cluster"),
    "apps-svc": ("apps-svc", "bioengine-apps"),
    "datasets-svc": ("datasets-svc", "bioengine-datasets"),
    "gateway-svc": ("gateway-svc", "bioengine-gateway"),
    "ray-worker": (None, "ray start"),
}
REQUIRED_SECTIONS = {"environment", "runscript", "test", "labels", "help"}


def parse_definition(text: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Header keywords (``Bootstrap: docker``) and sections (``%post`` -> its lines)."""
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in text.splitlines():
        line = raw.rstrip()
        match = re.match(r"^%(\w+)\s*(.*)$", line)
        if match:
            name = match.group(1)
            if name in sections:
                raise ValueError(f"section %{name} appears twice")
            current = sections[name] = []
            continue
        if current is not None:
            if line.strip() and not line.lstrip().startswith("#"):
                current.append(line.strip())
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if not sep or not re.match(r"^[A-Za-z]+$", key):
            raise ValueError(f"bad header line {line!r}")
        header[key.strip()] = value.strip()
    return header, sections


def member_scripts() -> dict[str, dict[str, str]]:
    """Workspace member name -> its console scripts."""
    members = {}
    for pyproject in [*ROOT.glob("services/*/pyproject.toml"), *ROOT.glob("libs/*/pyproject.toml")]:
        project = tomllib.loads(pyproject.read_text())["project"]
        members[project["name"]] = project.get("scripts", {})
    return members


def logical_lines(lines: list[str]) -> list[str]:
    """Join backslash-continued lines."""
    joined, buffer = [], ""
    for line in lines:
        if line.endswith("\\"):
            buffer += line[:-1] + " "
        else:
            joined.append(buffer + line)
            buffer = ""
    return joined


def test_every_service_has_a_definition():
    services = {p.parent.name for p in ROOT.glob("services/*/pyproject.toml")}
    assert services <= set(IMAGES), f"services without an Apptainer definition: {services - set(IMAGES)}"
    assert {p.stem for p in APPTAINER_DIR.glob("*.def")} == set(IMAGES)


def containerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Containerfile, continuation lines joined."""
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    joined = logical_lines([line.strip() for line in lines])
    return [(line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1]) for line in joined]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_definition(image):
    member, command = IMAGES[image]
    script = command.split()[0]
    header, sections = parse_definition((APPTAINER_DIR / f"{image}.def").read_text())

    # Bootstrapped from the tested OCI image, as save-images.sh saves it; nothing installed here.
    assert header == {"Bootstrap": "docker-archive", "From": f"infra/apptainer/archives/{image}.tar"}
    assert set(sections) >= REQUIRED_SECTIONS, f"missing: {REQUIRED_SECTIONS - set(sections)}"
    assert not {"files", "post", "setup"} & set(sections), "the image comes as built and tested"

    # The OCI image: syncs exactly the right member from the lock, without dev tools, and runs
    # the same command.
    instructions = containerfile_instructions((CONTAINERS_DIR / f"{image}.Containerfile").read_text())
    syncs = [shlex.split(args) for kind, args in instructions if kind == "RUN" and "uv sync" in args]
    assert len(syncs) == 1, syncs
    sync = syncs[0]
    assert "--frozen" in sync and "--no-dev" in sync and "--no-editable" in sync
    if member is None:
        assert "--all-packages" in sync and "--package" not in sync
    else:
        assert sync[sync.index("--package") + 1] == member
        assert member in member_scripts()
    labels_of_image = " ".join(args for kind, args in instructions if kind == "LABEL")
    assert f"bioengine.service={image}" in labels_of_image
    assert f"bioengine.console-script={script}" in labels_of_image
    env_of_image = " ".join(args for kind, args in instructions if kind == "ENV")
    assert "RAY_USAGE_STATS_ENABLED=0" in env_of_image
    assert "PATH=/opt/bioengine/venv/bin:" in env_of_image
    entrypoint = json.loads(next(args for kind, args in instructions if kind == "ENTRYPOINT"))

    # %runscript: what the image's entrypoint runs, with the arguments
    if member is not None:
        assert entrypoint == ["entrypoint.sh", script]
        assert sections["runscript"] == [f'exec entrypoint.sh {script} "$@"']
        assert script in member_scripts()[member]
        # The image's container defaults (/data, console logs) give way to the service's own.
        assert sections["environment"] == ["unset BIOENGINE_WORKSPACE_DIR BIOENGINE_LOG_FILE"]
    else:
        assert entrypoint == command.split()
        assert sections["runscript"] == [f'exec {command} "$@"']
        every_script = {name for scripts in member_scripts().values() for name in scripts}
        assert "bioengine-worker" in every_script  # start-worker.sh runs it from this image
    assert any(script in line for line in sections["test"])

    labels = dict(line.split(maxsplit=1) for line in sections["labels"])
    assert labels["bioengine.service"] == image
    assert labels["bioengine.console-script"] == script
    assert labels["org.opencontainers.image.title"] == image
    assert sections["help"], "empty %help"


def test_save_images_writes_the_archives_the_definitions_read(tmp_path):
    """With a stand-in podman: one ``podman save --format docker-archive`` of each image, to
    the path its definition's ``From:`` names (relative to the repository root)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    _stub(
        bin_dir / "podman",
        f'echo "$*" >>{calls}\n'
        'if [ "$1" = save ]; then\n'
        '  while [ "$#" -gt 0 ]; do [ "$1" = -o ] && out=$2; last=$1; shift; done\n'
        '  echo "$last" >"$out"\n'
        "fi",
    )
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "BIOENGINE_IMAGE_ARCHIVES": str(tmp_path / "archives")}
    result = subprocess.run(["bash", str(SAVE_IMAGES)], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    for image in IMAGES:
        archive = tmp_path / "archives" / f"{image}.tar"
        assert archive.read_text().strip() == f"localhost/bioengine-{image}:latest"
        header, _ = parse_definition((APPTAINER_DIR / f"{image}.def").read_text())
        assert header["From"] == f"infra/apptainer/archives/{image}.tar"
    saves = [line.split() for line in calls.read_text().splitlines() if line.startswith("save")]
    assert len(saves) == len(IMAGES)
    assert all("--format" in save and save[save.index("--format") + 1] == "docker-archive" for save in saves)
    # Without BIOENGINE_IMAGE_ARCHIVES the archives go where the definitions look for them.
    assert "${BIOENGINE_IMAGE_ARCHIVES:-$here/archives}" in SAVE_IMAGES.read_text()
    assert (APPTAINER_DIR / ".gitignore").read_text().split() == ["archives/"]

    # An unknown name is refused before anything is saved.
    (tmp_path / "archives" / "gateway-svc.tar").unlink()
    result = subprocess.run(
        ["bash", str(SAVE_IMAGES), "gateway-svc", "no-such-image"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert f"one of: {' '.join(sorted(IMAGES))}" in result.stderr
    assert not (tmp_path / "archives" / "gateway-svc.tar").exists()
    assert os.access(SAVE_IMAGES, os.X_OK)


def test_parser_rejects_broken_files():
    with pytest.raises(ValueError, match="twice"):
        parse_definition("Bootstrap: docker\n%post\n  true\n%post\n  true\n")
    with pytest.raises(ValueError, match="bad header"):
        parse_definition("Bootstrap docker\n")


# ---------------------------------------------------------------------------------------------
# infra/slurm/start-worker.sh
# ---------------------------------------------------------------------------------------------
def _stub(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def login_node(tmp_path):
    """A PATH with stand-ins for apptainer and the SLURM commands, and an image file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sbatch", "squeue", "scancel", "sacct", "sinfo"):
        _stub(bin_dir / name, "exit 0")
    _stub(bin_dir / "scontrol", f"echo 'PluginDir = {tmp_path}/plugins'")
    (tmp_path / "plugins").mkdir()
    _stub(bin_dir / "apptainer", 'echo "RAN $*"; env | grep -c "^APPTAINERENV_BIOENGINE_TOKEN=" || true')
    image = tmp_path / "ray-worker.sif"
    image.write_text("not really an image")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "BIOENGINE_TOKEN": "very-secret-token",
    }
    return tmp_path, env, image


def run_start_worker(*args, env):
    return subprocess.run(["/bin/bash", str(START_WORKER), *args], env=env, capture_output=True, text=True)


def test_start_worker_help():
    result = subprocess.run(["bash", str(START_WORKER), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "BIOENGINE_TOKEN" in result.stdout and "--dry-run" in result.stdout
    assert os.access(START_WORKER, os.X_OK)


def test_start_worker_dry_run_binds_slurm_and_hides_the_token(login_node):
    tmp_path, env, image = login_node
    workspace = tmp_path / "shared" / "ws"
    result = run_start_worker(
        "--image", str(image), "--workspace-dir", str(workspace), "--bind", "/data:/data",
        "--dry-run", "--", "--server-url", "https://hypha.example", "--workspace", "w1",
        env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "very-secret-token" not in result.stdout + result.stderr
    command = shlex.split(result.stdout.splitlines()[0])
    assert command[:3] == ["apptainer", "exec", "--cleanenv"]
    binds = [command[i + 1] for i, word in enumerate(command) if word == "--bind"]
    for name in ("sbatch", "squeue", "scancel", "sacct", "sinfo"):
        assert f"{tmp_path}/bin/{name}:/usr/local/bin/{name}" in binds
    assert f"{tmp_path}/plugins:{tmp_path}/plugins" in binds
    assert f"{workspace}:{workspace}" in binds and "/data:/data" in binds
    tail = command[command.index(str(image)) :]
    assert tail == [
        str(image), "bioengine-worker", "--mode", "slurm", "--workspace-dir", str(workspace),
        "--server-url", "https://hypha.example", "--workspace", "w1",
    ]  # fmt: skip
    assert "APPTAINERENV_BIOENGINE_TOKEN" in result.stdout  # named, not shown


def test_start_worker_runs_apptainer_with_the_token_in_its_environment(login_node):
    tmp_path, env, image = login_node
    result = run_start_worker("--image", str(image), "--workspace-dir", str(tmp_path / "ws"), env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("RAN exec --cleanenv") and "very-secret-token" not in result.stdout
    assert lines[1] == "1"  # the stand-in apptainer saw APPTAINERENV_BIOENGINE_TOKEN


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mode", "single-machine"], "--mode is always slurm"),
        (["--token", "x"], "BIOENGINE_TOKEN"),
        (["--image", "/no/such.sif"], "not found"),
    ],
)
def test_start_worker_refuses(login_node, args, message):
    _, env, image = login_node
    if "--image" not in args:
        args = ["--image", str(image), *args]
    result = run_start_worker(*args, env=env)
    assert result.returncode != 0 and message in result.stderr


def test_start_worker_needs_slurm(login_node):
    tmp_path, env, image = login_node
    for name in ("sbatch", "squeue", "scancel", "sacct", "sinfo", "scontrol"):
        (tmp_path / "bin" / name).unlink()
    # only the stand-in apptainer and mkdir: no SLURM commands, not even the host's
    (tmp_path / "bin" / "mkdir").symlink_to(
        "/usr/bin/mkdir" if Path("/usr/bin/mkdir").exists() else "/bin/mkdir"
    )
    env["PATH"] = f"{tmp_path}/bin"
    result = run_start_worker("--image", str(image), env=env)
    assert result.returncode != 0 and "SLURM login node" in result.stderr
