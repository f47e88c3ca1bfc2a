"""The adapter over the SLURM client commands: sbatch, squeue, scancel, sacct, scontrol.

``sbatch`` exports its own environment to the job by default (``--export=ALL``), so every command
runs with a scrubbed one (no ``BIOENGINE_*``/``HYPHA_*``, no token variables).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import shlex
import shutil
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, Protocol, runtime_checkable

from bioengine_common import scrub_environment, within

from .queue import (
    SACCT_FIELDS,
    SQUEUE_FORMAT,
    SlurmJob,
    cancelled_by_uid,
    parse_kill_requests,
    parse_sacct,
    parse_squeue,
)
from .reasons import Canceller
from .settings import TAG_PATTERN, job_comment, job_name

__all__ = ["CONTROLLER_LOG_TAIL", "SlurmClient", "SlurmCommandError", "SlurmCommands"]

_JOB_ID_RE = re.compile(r"^\d+(?:_\d+)?$")


class SlurmCommandError(RuntimeError):
    """A SLURM client command failed, timed out or is missing."""

    def __init__(self, command: Sequence[str], message: str, returncode: int | None = None) -> None:
        self.command = list(command)
        self.returncode = returncode
        super().__init__(f"{shlex.join(self.command)}: {message}")


@runtime_checkable
class SlurmClient(Protocol):
    """What the autoscaler needs of SLURM, for one worker's jobs: :class:`SlurmCommands`, or a
    fake in tests (a scaling round without SLURM daemons)."""

    #: The name of every job of this worker (``bioengine-<tag>-worker``).
    job_name: str

    async def submit(self, script: str) -> str:
        """Submit the batch script; returns the job id. Raises :class:`SlurmCommandError`."""
        ...

    async def list_jobs(self, *, include_finished: bool = False) -> list[SlurmJob]:
        """This worker's jobs (finished ones too, while SLURM still lists them, if asked)."""
        ...

    async def cancel(self, job_ids: Iterable[str]) -> list[str]:
        """Cancel jobs of this worker; returns the ids asked for."""
        ...

    async def finished_jobs(self, since: str = "now-1days") -> list[SlurmJob] | None:
        """Final states of ended jobs; None when SLURM keeps none."""
        ...

    async def who_cancelled(self, job_ids: Iterable[str]) -> dict[str, Canceller]:
        """Who cancelled each of these jobs, as far as SLURM can tell."""
        ...


class SlurmCommands:
    """Runs the SLURM client commands for the worker with ``tag``, only ever on its own jobs.

    ``cancel`` accepts only job ids that ``list_jobs`` (squeue filtered by this tag) returned, and
    passes ``--name`` to ``scancel`` as a second guard.
    """

    def __init__(
        self,
        tag: str,
        *,
        timeout_s: float = 30.0,
        bin_dir: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if not TAG_PATTERN.match(tag):
            raise ValueError(f"tag: invalid worker tag {tag!r}")
        self.tag = tag
        self.job_name = job_name(tag)
        self.comment = job_comment(tag)
        self.timeout_s = timeout_s
        self._bin_dir = bin_dir
        self._env = dict(env) if env is not None else None
        self._listed: set[str] = set()
        self.sacct_mode: Literal["accounting", "jobcomp", "unavailable"] | None = None
        self._controller_log: str | None = None

    @staticmethod
    def available(bin_dir: str | None = None) -> bool:
        """Whether the SLURM client commands are on PATH (or in ``bin_dir``)."""
        return (
            shutil.which("sinfo", path=bin_dir) is not None
            and shutil.which("sbatch", path=bin_dir) is not None
        )

    def _command(self, name: str) -> str:
        return os.path.join(self._bin_dir, name) if self._bin_dir else name

    async def _run(self, args: list[str], stdin: str | None = None) -> tuple[int, str, str]:
        try:
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                # sbatch hands its environment to the job (--export=ALL by default): no secrets.
                env=scrub_environment(self._env if self._env is not None else os.environ),
            )
        except FileNotFoundError:
            raise SlurmCommandError(args, f"{args[0]} not found: is this a SLURM login node?") from None
        try:
            out, err = await within(
                proc.communicate(stdin.encode() if stdin is not None else None), self.timeout_s
            )
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise SlurmCommandError(
                args, f"no answer within {self.timeout_s:g} s (slurmctld down?)"
            ) from None
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    async def submit(self, script: str) -> str:
        """``sbatch`` the script (on stdin) tagged for this worker; returns the job id."""
        if not script.startswith("#!"):
            raise ValueError("script: a batch script must start with '#!'")
        log_dir = re.search(r"^#SBATCH --output=(\S+)/[^/\s]+$", script, re.MULTILINE)
        if log_dir and "%" not in log_dir.group(1):
            # SLURM does not create it: a job whose output dir is missing fails (JobLaunchFailure).
            # A relative one is relative to the job's --chdir (or to where sbatch runs).
            chdir = re.search(r"^#SBATCH --chdir=(\S+)$", script, re.MULTILINE)
            base = chdir.group(1) if chdir and "%" not in chdir.group(1) else "."
            os.makedirs(os.path.join(base, log_dir.group(1)), exist_ok=True)
        args = [
            self._command("sbatch"),
            "--parsable",
            f"--job-name={self.job_name}",  # the command line wins over the script's #SBATCH lines
            f"--comment={self.comment}",
        ]
        code, out, err = await self._run(args, stdin=script)
        if code != 0:
            raise SlurmCommandError(args, (err.strip() or out.strip() or "failed"), code)
        job_id = out.strip().split(";", 1)[0]
        if not _JOB_ID_RE.match(job_id):
            raise SlurmCommandError(args, f"unexpected answer {out.strip()!r}", code)
        self._listed.add(job_id)
        return job_id

    async def list_jobs(self, *, include_finished: bool = False) -> list[SlurmJob]:
        """This worker's jobs from ``squeue`` (finished ones too, for ``MinJobAge``, if asked)."""
        args = [
            self._command("squeue"),
            "--noheader",
            "--me",
            f"--name={self.job_name}",
            f"--format={SQUEUE_FORMAT}",
        ]
        if include_finished:
            args.append("--states=all")
        code, out, err = await self._run(args)
        if code != 0:
            raise SlurmCommandError(args, err.strip() or "failed", code)
        jobs = [j for j in parse_squeue(out) if j.name == self.job_name and j.comment in (None, self.comment)]
        self._listed.update(j.job_id for j in jobs)
        return jobs

    async def cancel(self, job_ids: Iterable[str]) -> list[str]:
        """``scancel`` jobs of this worker; returns the ids asked for. Jobs already gone are fine."""
        ids = [str(job_id) for job_id in job_ids]
        foreign = [job_id for job_id in ids if job_id not in self._listed or not _JOB_ID_RE.match(job_id)]
        if foreign:
            raise ValueError(
                f"job_ids: refusing to cancel {', '.join(foreign)}: not listed by squeue for tag {self.tag}"
            )
        if not ids:
            return []
        args = [self._command("scancel"), f"--name={self.job_name}", *ids]
        code, _out, err = await self._run(args)
        if code != 0:
            problems = [line for line in err.splitlines() if line.strip() and "Invalid job id" not in line]
            if problems:
                raise SlurmCommandError(args, "; ".join(problems), code)
        return ids

    async def finished_jobs(self, since: str = "now-1days") -> list[SlurmJob] | None:
        """Final states from ``sacct`` (accounting) or ``sacct -c`` (jobcomp/filetxt); None when
        neither is configured. ``sacct -c`` ignores ``--name``: filtered here."""
        base = [
            self._command("sacct"),
            "--parsable2",
            "--noheader",
            "--allocations",
            f"--starttime={since}",
            f"--format={SACCT_FIELDS}",
        ]
        attempts: list[tuple[Literal["accounting", "jobcomp"], list[str]]] = [
            ("accounting", [*base, f"--name={self.job_name}"]),
            ("jobcomp", [*base, "--completion"]),
        ]
        if self.sacct_mode == "jobcomp":
            attempts.reverse()
        for mode, args in attempts:
            try:
                code, out, _err = await self._run(args)
            except SlurmCommandError:
                continue
            if code == 0:
                self.sacct_mode = mode
                return [j for j in parse_sacct(out) if j.name == self.job_name]
        self.sacct_mode = "unavailable"
        return None

    async def controller_log(self) -> str | None:
        """The controller's log file (``scontrol show config``) when this host can read it."""
        if self._controller_log is None:
            path = ""
            try:
                code, out, _err = await self._run([self._command("scontrol"), "show", "config"])
            except SlurmCommandError:
                code, out = 1, ""
            if code == 0:
                match = re.search(r"^SlurmctldLogFile\s*=\s*(\S+)\s*$", out, re.MULTILINE)
                if match and match.group(1) != "(null)":
                    path = match.group(1)
            self._controller_log = path
        if self._controller_log and os.access(self._controller_log, os.R_OK):
            return self._controller_log
        return None

    async def who_cancelled(self, job_ids: Iterable[str]) -> dict[str, Canceller]:
        """Who cancelled each job: from sacct's ``CANCELLED by <uid>`` (SLURM accounting), else
        from the controller's log (``REQUEST_KILL_JOB JobId=<id> uid <uid>``) when it is readable
        here, else unknown with the reason. Without accounting, squeue, scontrol and the jobcomp
        log show ``CANCELLED`` but not by whom."""
        ids = {str(job_id) for job_id in job_ids}
        found: dict[str, Canceller] = {}
        if ids and self.sacct_mode in (None, "accounting"):
            with contextlib.suppress(Exception):
                for job in await self.finished_jobs() or []:
                    uid = cancelled_by_uid(job.raw_state) if self.sacct_mode == "accounting" else None
                    if job.job_id in ids and uid is not None:
                        found[job.job_id] = Canceller(uid=uid, user=_user_name(uid), source="sacct")
        missing = ids - set(found)
        log = await self.controller_log() if missing else None
        if log is not None:
            try:
                text = await asyncio.to_thread(_read_tail, log, CONTROLLER_LOG_TAIL)
            except OSError:
                text = ""
            requests = parse_kill_requests(text)
            for job_id in missing:
                if job_id in requests:
                    uid = requests[job_id]
                    found[job_id] = Canceller(uid=uid, user=_user_name(uid), source="the slurmctld log")
        note = "no SLURM accounting here (sacct) and " + (
            "the controller's log does not name it" if log else "the controller's log is not readable here"
        )
        for job_id in ids - set(found):
            found[job_id] = Canceller(source="none", note=note)
        return found


#: How much of the end of the controller's log is searched for kill requests.
CONTROLLER_LOG_TAIL = 8 * 1024 * 1024


def _read_tail(path: str, size: int) -> str:
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        end = handle.tell()
        handle.seek(max(0, end - size))
        return handle.read().decode(errors="replace")


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None
