"""A stable HTTP endpoint: the port a replica picked is remembered and reused after a restart.

Clients hold URLs (``http://host:port/data/...``) and open arrays on them; a port that moved
at each restart would break every one of them. With ``--http-port 0`` (the default) a replica
takes a *slot* under ``<workspace-dir>/state/datasets/`` and keeps its port there:

- ``http-port-client-<client id>.json`` for a replica started with ``--client-id``: the same
  client id gets the same port back, whichever order replicas restart in;
- ``http-port-replica-<n>.json`` for a replica with the default random client id (a new Hypha
  client at every start): it takes the lowest-numbered slot that no live replica holds, so a
  single replica always gets its port back and N replicas share N ports between them.

A replica holds its slot with an exclusive ``flock`` on ``<slot>.lock`` for as long as the
process lives; the kernel lets go of it when the process ends, however it ends (``kill -9``
too). The port file is replaced atomically (temporary file, fsync, rename). A remembered port
that something else now holds is logged and replaced by a free one (which is then remembered);
a file that cannot be read is logged, kept aside as ``<file>.corrupt`` and replaced.

Sockets bind with ``SO_REUSEADDR``: a restarted replica gets its port back at once even while
connections of its previous run linger in TIME_WAIT (never ``SO_REUSEPORT``, which would let two
live processes share one port).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: slots without locks
    fcntl = None  # type: ignore[assignment]

from bioengine_common import ConfigurationError, write_json_atomic

__all__ = [
    "MAX_UNNAMED_SLOTS",
    "Endpoint",
    "PortSlot",
    "bind_socket",
    "claim_slot",
    "open_http_socket",
    "state_dir",
]

#: Replicas without --client-id that may share one workspace dir, each with a port of its own.
MAX_UNNAMED_SLOTS = 64
#: How long a replica with a fixed client id waits for its slot (its previous run may still be
#: exiting) before it concludes that a live process uses the same client id.
NAMED_SLOT_WAIT = 10.0

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def state_dir(workspace_dir: Path) -> Path:
    """Where datasets-svc keeps what must survive a restart (not in the data directory)."""
    return workspace_dir.expanduser().resolve() / "state" / "datasets"


def _slot_name(client_id: str) -> str:
    safe = _UNSAFE.sub("_", client_id)[:80]
    if safe != client_id:  # two client ids must never share a file
        safe += "-" + hashlib.sha256(client_id.encode()).hexdigest()[:8]
    return f"client-{safe}"


@dataclass
class PortSlot:
    """One replica's claim on a remembered port: ``<directory>/http-port-<name>.json``."""

    directory: Path
    name: str
    #: Whether this process holds the slot's lock (False where the file system has no locks).
    locked: bool = False
    _lock_fd: int | None = field(default=None, repr=False)

    @property
    def path(self) -> Path:
        return self.directory / f"http-port-{self.name}.json"

    @property
    def lock_path(self) -> Path:
        return self.directory / f"http-port-{self.name}.lock"

    def read(self) -> tuple[int | None, str | None]:
        """``(port, None)``, ``(None, None)`` when nothing is remembered, or ``(None, problem)``
        when the file is there but unusable (the file is then moved aside as ``.corrupt``)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None, None
        except (OSError, UnicodeDecodeError) as exc:
            problem = f"cannot be read ({type(exc).__name__}: {exc})"
        else:
            try:
                data = json.loads(text)
            except ValueError:
                problem = "is not JSON"
            else:
                port = data.get("port") if isinstance(data, dict) else None
                if type(port) is int and 1 <= port <= 65535:
                    return port, None
                problem = f"holds no port between 1 and 65535 (port: {port!r})"
        with contextlib.suppress(OSError):
            os.replace(self.path, self.path.with_name(self.path.name + ".corrupt"))
        return None, problem

    def write(self, port: int, **details: Any) -> None:
        """Remember ``port`` atomically: readers see the old file or the new one, never a part."""
        record = {"port": port, **details, "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_json_atomic(self.path, record)

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None
            self.locked = False


class _SlotBusy(Exception):
    pass


def _lock(slot: PortSlot) -> PortSlot:
    """Hold ``slot``'s lock; raise _SlotBusy if a live process holds it. On a file system
    without locks, return the slot unlocked (the caller logs that)."""
    descriptor = os.open(slot.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is None:
        os.close(descriptor)
        return slot
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(descriptor)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise _SlotBusy from None
        return slot  # ENOLCK, EOPNOTSUPP, ENOSYS: no locks on this file system
    slot.locked, slot._lock_fd = True, descriptor
    os.set_inheritable(descriptor, False)
    return slot


def claim_slot(
    directory: Path, client_id: str | None, *, wait: float = NAMED_SLOT_WAIT, poll: float = 0.2
) -> PortSlot:
    """The slot of a replica: by ``client_id`` when it was given, else the first free unnamed one.

    A named slot held by a live process means two processes run with one client id on one
    workspace dir (Hypha would let one evict the other): after ``wait`` seconds that is a
    ``ConfigurationError``. With every unnamed slot taken, also a ``ConfigurationError``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if client_id:
        slot = PortSlot(directory, _slot_name(client_id))
        deadline = time.monotonic() + wait
        while True:
            try:
                return _lock(slot)
            except _SlotBusy:
                if time.monotonic() >= deadline:
                    raise ConfigurationError(
                        f"another live bioengine-datasets uses client id '{client_id}' with the "
                        f"workspace dir of {directory} (it holds {slot.lock_path}); give each "
                        "replica its own --client-id"
                    ) from None
                time.sleep(poll)
    for number in range(MAX_UNNAMED_SLOTS):
        try:
            return _lock(PortSlot(directory, f"replica-{number}"))
        except _SlotBusy:
            continue
    raise ConfigurationError(
        f"{MAX_UNNAMED_SLOTS} replicas without --client-id already run with the state dir {directory}"
    )


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: a free port) with ``SO_REUSEADDR``, so a
    port whose previous owner exited a moment ago binds at once. OSError if it is taken."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        if os.name == "posix":  # elsewhere SO_REUSEADDR would let us steal a live port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and host in ("", "::"):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class Endpoint:
    """The listening socket and what was decided about its port, for the log and the status."""

    sock: socket.socket
    port: int
    slot: PortSlot | None
    #: "fixed" (--http-port), "kept" (the remembered port), "new" (first start of this slot),
    #: "moved" (the remembered port was taken or its file unusable: a new one, remembered)
    outcome: str
    remembered: int | None = None
    problem: str | None = None

    def describe(self) -> str:
        where = self.slot.path if self.slot else None
        return {
            "fixed": "port set by --http-port",
            "kept": f"port kept across restarts, remembered in {where}",
            "new": f"new port, remembered in {where} for the next start",
            "moved": f"new port, remembered in {where}; {self.problem}",
        }[self.outcome]

    def status(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "outcome": self.outcome,
            "file": str(self.slot.path) if self.slot else None,
            "slot": self.slot.name if self.slot else None,
            "locked": self.slot.locked if self.slot else None,
            "previous_port": self.remembered if self.outcome == "moved" else None,
            "problem": self.problem,
        }


def open_http_socket(
    host: str, port: int, workspace_dir: Path, client_id: str | None, logger: logging.Logger, **details: Any
) -> Endpoint:
    """The HTTP server's socket. ``port`` > 0 is used as given (taken: OSError); 0 means the
    slot's remembered port, or a free one that is then remembered. ``details`` go into the file."""
    if port:
        return Endpoint(bind_socket(host, port), port, None, "fixed")
    slot = claim_slot(state_dir(workspace_dir), client_id)
    if not slot.locked:
        logger.warning(
            "Cannot lock %s (the file system has no locks): replicas sharing this workspace dir "
            "may take each other's remembered HTTP port",
            slot.lock_path,
        )
    remembered, problem = slot.read()
    outcome = "new"
    sock: socket.socket | None = None
    if problem is not None:
        problem = f"the port file {problem}"
        logger.warning(
            "Ignored %s: %s; kept it as %s.corrupt and picking a new port",
            slot.path, problem, slot.path.name,
        )  # fmt: skip
        outcome = "moved"
    elif remembered is not None:
        try:
            sock = bind_socket(host, remembered)
            outcome = "kept"
        except OSError as exc:
            problem = f"port {remembered} is taken by another process ({exc.strerror or exc})"
            logger.warning(
                "The remembered HTTP port %d (%s) is taken by another process (%s); serving on a "
                "new port, remembered from now on. Clients that opened datasets on port %d must "
                "open them again.",
                remembered, slot.path, exc.strerror or exc, remembered,
            )  # fmt: skip
            outcome = "moved"
    if sock is None:
        try:
            sock = bind_socket(host, 0)
        except BaseException:
            slot.release()
            raise
    bound = int(sock.getsockname()[1])
    try:  # also when kept: the file names the process that holds the port now
        slot.write(bound, host=host, client_id=client_id, pid=os.getpid(), hostname=socket.gethostname(),
                   **details)  # fmt: skip
    except OSError as exc:
        logger.warning("Could not remember HTTP port %d in %s: %s", bound, slot.path, exc)
    return Endpoint(sock, bound, slot, outcome, remembered, problem)
