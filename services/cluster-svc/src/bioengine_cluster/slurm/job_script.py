"""The exact batch script of one worker job (what ``sbatch`` receives on stdin; pure).

Each job's Ray node advertises its job id three ways: ``RAY_CLOUD_INSTANCE_ID=$SLURM_JOB_ID``
(what Ray's v2 autoscaler matches instances by), the custom resource ``slurm_job_id:<id>`` (what
the cluster status reads) and the node labels ``bioengine-tag`` / ``bioengine-slurm-job-id``.
``scancel`` sends SIGTERM to ``ray start --block`` (the script ``exec``s it), which drains the node
(``RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S``) before SLURM's ``KillWait`` ends in SIGKILL. No secret
reaches a job: the script unsets ``BIOENGINE_*``/``HYPHA_*`` and the Ray token goes by path only
(``RAY_AUTH_TOKEN_PATH``): never in the script, ``squeue`` or ``scontrol`` output.
"""

from __future__ import annotations

import shlex

from bioengine_common.local_stack import sandbox_command, sandbox_probe

from .._resources import GIB
from .settings import (
    JOB_RESOURCE_PREFIX,
    OBJECT_STORE_FRACTION,
    RAY_MEMORY_FRACTION,
    JobSpec,
    SlurmSettings,
    job_comment,
    job_name,
    one_line,
)

__all__ = ["render_job_script"]


def _q(value: str | float | int) -> str:
    return shlex.quote(str(value))


def render_job_script(
    settings: SlurmSettings, head_address: str | None = None, *, job: JobSpec | None = None
) -> str:
    """The exact batch script of one worker job (what ``sbatch`` receives on stdin).

    ``head_address`` overrides ``settings.head_address``; ``job`` overrides the job size.
    """
    job = job or settings.job_spec()
    head = head_address if head_address is not None else settings.head_address
    if head is not None:
        one_line("head_address", head)
    if settings.worker_command is None and not (head and head.strip()):
        raise ValueError("head_address: required to start Ray workers (set it or pass head_address)")
    tag = settings.tag
    name = job_name(tag)

    directives = [
        f"--job-name={name}",
        f"--comment={job_comment(tag)}",
        "--nodes=1",
        "--ntasks=1",
        f"--cpus-per-task={job.cpus}",
        f"--mem={job.memory_mb()}M",
    ]
    if job.gpus > 0:
        directives.append(settings.gpu_flag_template.format(gpus=job.gpus))
    directives.append(f"--time={job.time_limit}")
    if settings.partition:
        directives.append(f"--partition={settings.partition}")
    if settings.account:
        directives.append(f"--account={settings.account}")
    if settings.work_dir:
        directives.append(f"--chdir={settings.work_dir}")
    output = f"{settings.log_dir.rstrip('/')}/%x-%j.out" if settings.log_dir else "%x-%j.out"
    directives.append(f"--output={output}")
    # sbatch reads #SBATCH lines without a shell: values are not quoted, so paths with spaces
    # are rejected here rather than mis-parsed.
    for field, path in (("work_dir", settings.work_dir), ("log_dir", settings.log_dir)):
        if path and any(ch.isspace() for ch in path):
            raise ValueError(f"{field}: must not contain whitespace (it goes on an #SBATCH line): {path!r}")

    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives), *settings.extra_sbatch_lines]
    lines += [
        "",
        f"# BioEngine Ray worker job (tag {tag}); rendered by bioengine-cluster.",
        'if [ -z "${SLURM_JOB_ID:-}" ]; then',
        '    echo "not inside a SLURM job (SLURM_JOB_ID is unset)" >&2',
        "    exit 1",
        "fi",
        'echo "bioengine worker job ${SLURM_JOB_ID} on $(hostname) at $(date -Is)"',
        # No service secret reaches Ray (and so app code), whatever the site's export rules.
        "unset RAY_AUTH_TOKEN",
        'for name in $(compgen -e); do case "$name" in BIOENGINE_*|HYPHA_*) unset "$name";; esac; done',
        'export RAY_CLOUD_INSTANCE_ID="${SLURM_JOB_ID}"',
        f"export BIOENGINE_SLURM_TAG={_q(tag)}",
        "export RAY_USAGE_STATS_ENABLED=0",
    ]
    if settings.ray_token_file:
        token = _q(settings.ray_token_file)
        lines += [
            "export RAY_AUTH_MODE=token",
            f"export RAY_AUTH_TOKEN_PATH={token}",
            f"if [ ! -r {token} ]; then",
            "    echo "
            + _q(
                f"the Ray token file {settings.ray_token_file} is not readable on this node: it "
                "must be on a filesystem the compute nodes share"
            )
            + ' "($(hostname))" >&2',
            "    exit 1",
            "fi",
        ]
    else:
        lines.append("export RAY_AUTH_MODE=disabled")
    if settings.prologue.strip():
        lines += ["", "# --- prologue ---", settings.prologue.rstrip("\n"), "# --- end of prologue ---"]

    if settings.worker_command is not None:
        # Through bash -c: `exec` needs a program, and the command may be a builtin or a pipeline.
        run = "bash -c " + _q(settings.worker_command)
    else:
        assert head is not None
        memory_bytes = int(job.memory_gb * GIB)
        ray = [
            _q(settings.ray_executable),
            "start",
            f"--address={_q(head)}",
            "--block",
            f"--num-cpus={job.cpus}",
            f"--num-gpus={job.gpus}",
            f"--memory={int(memory_bytes * RAY_MEMORY_FRACTION)}",
            f"--object-store-memory={int(memory_bytes * OBJECT_STORE_FRACTION)}",
            # The job id is only known at run time: double quotes, and the id is a number.
            f'--resources="{{\\"{JOB_RESOURCE_PREFIX}${{SLURM_JOB_ID}}\\": 1}}"',
            f'--labels="bioengine-tag={tag},bioengine-slurm-job-id=${{SLURM_JOB_ID}}"',
            "--disable-usage-stats",
        ]
        if settings.ray_temp_dir:
            ray.append(f"--temp-dir={_q(settings.ray_temp_dir)}")
        run = " ".join(ray)

    if settings.apptainer_image:
        wrapper = [_q(settings.apptainer_executable), "exec"]
        if job.gpus > 0 and "--nv" not in settings.apptainer_args:
            wrapper.append("--nv")
        for bind in settings.apptainer_binds:
            wrapper += ["--bind", _q(bind)]
        if settings.ray_token_file:
            # Read-only at the same path, so RAY_AUTH_TOKEN_PATH holds inside the image too.
            wrapper += ["--bind", _q(f"{settings.ray_token_file}:{settings.ray_token_file}:ro")]
        wrapper += [_q(arg) for arg in settings.apptainer_args]
        wrapper.append(_q(settings.apptainer_image))
        run = " ".join(wrapper) + " " + run

    lines += ["", "# exec: scancel's SIGTERM reaches ray, which drains the node before exiting."]
    if settings.sandbox is not None and not settings.apptainer_image:
        sandboxed = " ".join(_q(word) for word in sandbox_command([], settings.sandbox)) + " " + run
        unavailable = "bioengine: this node cannot sandbox Ray (user namespaces refused)"
        lines += [
            "# App code must not see the worker's files: Ray in namespaces hiding them.",
            f"if {' '.join(_q(word) for word in sandbox_probe())} >/dev/null 2>&1; then",
            f"    exec {sandboxed}",
            "fi",
            *(
                [f'echo {_q(unavailable)} "($(hostname))" >&2', "exit 1"]
                if settings.sandbox_required
                else [f'echo {_q(unavailable + ": running it without")} "($(hostname))" >&2']
            ),
        ]
    lines += [f"exec {run}", ""]
    return "\n".join(lines)
