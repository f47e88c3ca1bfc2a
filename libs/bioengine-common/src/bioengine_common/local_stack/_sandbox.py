"""Keep app code away from the worker's own files: the Ray head in namespaces of its own.

Every Ray worker process, and so all app code and ``run_code``, descends from the raylet. When
the head starts inside a sandbox, those processes run in

- a **mount namespace** where each hidden path (the workspace dir: the Hypha JWT secret, the
  admin token in ``worker.json``, app secrets, service logs, datasets, the local store's data)
  is covered by an empty tmpfs, with the few paths Ray itself needs (its temp dir, its token
  file, the apps' code and HOME dirs) bind-mounted back;
- a **PID namespace** with its own ``/proc``, so the environments and files of the service
  processes (``/proc/<pid>/environ`` holds their Hypha tokens) cannot be read;
- a **user namespace** nested inside the one that made the mounts: the kernel locks mounts
  inherited by a less privileged namespace, so code inside cannot unmount the covers.

The network namespace is the host's: drivers (the services) reach the head as before. The
file system outside the hidden paths, and the OS user, are unchanged: this keeps apps from
acting as the worker, not from acting as its OS user (see the README's security model).

Built with util-linux's ``unshare`` and ``mount`` (no privileges needed where the kernel allows
unprivileged user namespaces, as Debian's and Ubuntu's do by default).
"""

from __future__ import annotations

import functools
import shlex
import shutil
import subprocess
from pathlib import Path

from pydantic import BaseModel, Field

from ..errors import ConfigurationError

__all__ = ["Sandbox", "sandbox_command", "sandbox_probe", "sandbox_unavailable"]


class Sandbox(BaseModel):
    """What the head's processes must not see, and what they need to see inside it."""

    hide: list[Path] = Field(description="Absolute paths covered by an empty tmpfs.")
    keep: list[Path] = Field(default=[], description="Paths inside a hidden one that stay visible.")

    def plan(self) -> tuple[list[Path], list[Path]]:
        """The hidden paths to cover (existing, outermost only) and the kept ones inside them.

        Refuses a hidden path inside a kept one: the bind mount would show it again.
        """
        hide = sorted({p.expanduser().resolve() for p in self.hide})
        keep = sorted({p.expanduser().resolve() for p in self.keep})
        for hidden in hide:
            for kept in keep:
                if hidden != kept and hidden.is_relative_to(kept):
                    raise ConfigurationError(f"sandbox: hidden path {hidden} is inside kept path {kept}")
        outer = [p for p in hide if p.exists() and not any(p != q and p.is_relative_to(q) for q in hide)]
        inside = [k for k in keep if k.exists() and any(k.is_relative_to(h) for h in outer)]
        return outer, inside


@functools.cache
def _map_flag() -> str:
    """``--map-current-user`` (util-linux >= 2.38: the same uid inside), else ``--map-root-user``."""
    out = subprocess.run(["unshare", "--help"], capture_output=True, text=True, check=False).stdout
    return "--map-current-user" if "--map-current-user" in out else "--map-root-user"


def _outer(map_flag: str) -> list[str]:
    return [
        "unshare", "--user", map_flag, "--mount", "--pid", "--fork", "--mount-proc",
        "--kill-child=SIGKILL", "--",
    ]  # fmt: skip


def sandbox_probe() -> list[str]:
    """A command that succeeds where user and mount namespaces can be made (for job scripts)."""
    return ["unshare", "--user", _map_flag(), "--mount", "--pid", "--fork", "--mount-proc", "true"]


@functools.cache
def sandbox_unavailable() -> str | None:
    """None when this machine can run a sandboxed head, else why not (one line)."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "util-linux's unshare and mount are not installed"
    flag = _map_flag()
    script = (
        'set -e; d=$(mktemp -d); mount -t tmpfs -o size=4k bioengine-probe "$d"; '
        f'unshare --user {flag} --mount -- true; umount "$d"; rmdir "$d"'
    )
    try:
        probe = subprocess.run(
            [*_outer(flag), "sh", "-c", script], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare failed: {exc}"
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or [f"exit code {probe.returncode}"])[-1]
        return f"the kernel refuses user namespaces here ({reason})"
    return None


def sandbox_command(argv: list[str], sandbox: Sandbox) -> list[str]:
    """``argv`` wrapped so it runs inside the sandbox (see the module's docstring).

    The wrapper's first process stays in the host's PID namespace (its PID is what Popen
    returns); its only child is ``argv``, PID 1 of the new namespace.
    """
    hide, keep = sandbox.plan()
    flag = _map_flag()
    q = shlex.quote
    lines = ["set -e", "stage=$(mktemp -d /tmp/bioengine-sandbox.XXXXXX)"]
    for i, kept in enumerate(keep):  # staged before the covers go on
        make = "mkdir" if kept.is_dir() else "touch"
        lines += [f'{make} "$stage/{i}"', f'mount --bind {q(str(kept))} "$stage/{i}"']
    for hidden in hide:
        if hidden.is_dir():
            lines.append(f"mount -t tmpfs -o size=64k,mode=0755 bioengine-hidden {q(str(hidden))}")
        else:
            lines.append(f"mount --bind /dev/null {q(str(hidden))}")
    for i, kept in enumerate(keep):
        make = f"mkdir -p {q(str(kept))}" if kept.is_dir() else (
            f"mkdir -p {q(str(kept.parent))} && touch {q(str(kept))}"
        )  # fmt: skip
        lines += [make, f'mount --move "$stage/{i}" {q(str(kept))}']
    lines.append('rm -rf "$stage"')
    # A working dir inside a hidden path would still reach what is under the cover ("../x"):
    # resolve it again through the new mount tree.
    lines.append('cd "$PWD" 2>/dev/null || cd /')
    # A nested user namespace: the mounts above become locked for everything below.
    lines.append(f'exec unshare --user {flag} --mount -- "$@"')
    return [*_outer(flag), "sh", "-c", "\n".join(lines), "bioengine-sandbox", *argv]
