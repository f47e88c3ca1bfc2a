"""Settings shared by every service, filled from CLI flags, ``BIOENGINE_*`` variables and defaults.

A field ``head_num_cpus`` is the flag ``--head-num-cpus`` and the variable
``BIOENGINE_HEAD_NUM_CPUS``. A flag wins over the variable, the variable over the default.
"""

from __future__ import annotations

import argparse
import json
import os
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from .errors import ConfigurationError

__all__ = ["ENV_PREFIX", "ServiceSettings", "build_parser", "load_settings"]

ENV_PREFIX = "BIOENGINE_"
S = TypeVar("S", bound=BaseModel)


class ServiceSettings(BaseModel):
    """What every service needs: where Hypha is, who it is there, and where it keeps files."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    server_url: str = Field("http://127.0.0.1:9527", description="URL of the Hypha server to register with.")
    workspace: str = Field("bioengine", description="Hypha workspace shared by all services of this worker.")
    token: SecretStr | None = Field(
        None,
        description="Hypha token with read_write access to the workspace "
        "(prefer the BIOENGINE_TOKEN variable: flags show in `ps`).",
    )
    client_id: str | None = Field(
        None,
        description="Hypha client id; must be unique among live clients. "
        "Default: the service name plus a random suffix.",
    )
    workspace_dir: Path = Field(
        Path("~/.bioengine"), description="Directory for state and logs of this worker."
    )
    log_file: str | None = Field(
        None,
        description="Log file path; default <workspace-dir>/logs/<service>.log; 'off' for console only.",
    )
    debug: bool = Field(False, description="Log at DEBUG level.")
    admin_users: list[str] = Field(
        default_factory=list,
        description="User ids or emails with admin rights ('*' = everyone), in addition to "
        "the owner of the token.",
    )
    trusted_callers: list[str] = Field(
        default_factory=list,
        description="Hypha user ids, besides the owner of this service's own token, whose clients "
        "may pass a caller on (`caller=`); only for deployments whose services run as different "
        "users. Never a person's user: whoever is listed can act as anyone.",
    )
    telemetry_exporter: Literal["none", "console", "otlp"] = Field(
        "none", description="Where OpenTelemetry spans go: nowhere, stderr, or OTLP over HTTP."
    )
    otlp_endpoint: str | None = Field(
        None,
        description="Base URL of an OpenTelemetry collector taking OTLP over HTTP (e.g. "
        "http://127.0.0.1:4318; spans go to <url>/v1/traces); setting it turns the otlp exporter "
        "on. The standard OTEL_EXPORTER_OTLP_ENDPOINT variable does the same.",
    )
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port of the Prometheus endpoint (http://<metrics-host>:<port>/metrics); "
        "0: any free port (logged); unset: no endpoint.",
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="Address the Prometheus endpoint listens on; loopback by default (the metrics "
        "need no token: expose them beyond the machine only to your scraper).",
    )
    metrics_fd: int | None = Field(
        None,
        ge=0,
        description="Serve the Prometheus endpoint on this inherited file descriptor, a socket "
        "already listening (bioengine-worker passes one per service and holds its port across "
        "restarts); --metrics-port then only names its port.",
    )
    server_wait: float = Field(
        60.0,
        ge=0,
        description="Seconds the first connection keeps trying a Hypha server that does not "
        "listen yet (one started at the same time as this service, as bioengine-worker does); "
        "then the process exits with code 3. A server that answers and refuses fails at once.",
    )
    reconnect_timeout: float = Field(
        0.0,
        ge=0,
        description="Seconds without a working Hypha connection before the process exits with "
        "code 3 for its supervisor to restart it; 0 (the default) keeps reconnecting however "
        "long the server is away. Either way the Ray head, apps, SLURM jobs and datasets keep "
        "running and a restarted service adopts them.",
    )
    stall_exit: float = Field(
        90.0,
        ge=0,
        description="Seconds the service's event loop may stay blocked (a native library, such "
        "as Ray's driver, deadlocked while holding the GIL) before the process writes every "
        "thread's stack to its console and exits with code 1 for its supervisor to restart it; "
        "0 never. The Ray head, apps, SLURM jobs and datasets keep running and are adopted.",
    )

    @field_validator("trusted_callers")
    @classmethod
    def _no_wildcard_trust(cls, value: list[str]) -> list[str]:
        for user in value:
            if user == "*" or not user.strip() or user.startswith("anonymouz-"):
                raise ValueError(
                    f"'{user}' cannot be trusted to pass callers on: list the Hypha user ids "
                    "the worker's services run as"
                )
        return value

    def resolved_log_file(self, service_name: str) -> Path | None:
        if self.log_file == "off":
            return None
        if self.log_file:
            return Path(self.log_file).expanduser()
        return self.workspace_dir.expanduser() / "logs" / f"{service_name}.log"

    def default_apps_dir(self) -> Path:
        """Where bioengine-apps keeps app code and HOME dirs unless ``--apps-dir`` says otherwise;
        a sandboxed Ray head keeps it visible to app code inside the hidden workspace dir."""
        return self.workspace_dir.expanduser() / "apps"

    @property
    def metrics_enabled(self) -> bool:
        """A Prometheus endpoint is served (and calls are counted only then)."""
        return self.metrics_port is not None or self.metrics_fd is not None

    def token_value(self) -> str | None:
        return self.token.get_secret_value() if self.token else None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _is_list(annotation: Any) -> bool:
    if typing.get_origin(annotation) in (list, tuple):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_list(arg) for arg in typing.get_args(annotation))
    return False


def _is_bool(annotation: Any) -> bool:
    return annotation is bool


def _parse_env_list(raw: str) -> list[str]:
    raw = raw.strip()
    if raw.startswith("["):
        value = json.loads(raw)
        if not isinstance(value, list):
            raise ValueError("expected a JSON list")
        return [str(v) for v in value]
    return [part for part in raw.replace(",", " ").split() if part]


def build_parser(model: type[BaseModel], prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=f"Every flag can also be set with an environment variable named {ENV_PREFIX}<FLAG> "
        "(e.g. --server-url is BIOENGINE_SERVER_URL).",
    )
    for name, field in model.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "unset" if default is None or default == [] else default
        if name == "token":
            shown = "unset"
        # argparse %-formats help texts.
        help_text = f"{field.description} (default: {shown})".replace("%", "%%")
        if _is_bool(field.annotation):
            parser.add_argument(
                _flag(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        elif _is_list(field.annotation):
            parser.add_argument(
                _flag(name),
                dest=name,
                nargs="*",
                default=argparse.SUPPRESS,
                help=help_text,
                metavar="VALUE",
            )
        else:
            choices = (
                typing.get_args(field.annotation) if typing.get_origin(field.annotation) is Literal else None
            )
            parser.add_argument(
                _flag(name),
                dest=name,
                default=argparse.SUPPRESS,
                help=help_text,
                choices=choices,
                metavar=None if choices else name.upper(),
            )
    return parser


def load_settings(
    model: type[S],
    argv: Sequence[str] | None = None,
    *,
    prog: str,
    description: str,
    environ: typing.Mapping[str, str] | None = None,
) -> S:
    """Build ``model`` from flags (``argv``), then ``BIOENGINE_*`` variables, then defaults.

    Invalid values end the program with a usage error that names the flag and the problem.
    """
    environ = os.environ if environ is None else environ
    parser = build_parser(model, prog, description)
    cli = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is None or raw == "":
            continue
        try:
            values[name] = _parse_env_list(raw) if _is_list(field.annotation) else raw
        except ValueError as exc:
            parser.error(f"{ENV_PREFIX}{name.upper()}: {exc}")
    values.update(cli)
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_flag(str(err['loc'][0])) if err['loc'] else 'settings'}: {err['msg']}" for err in exc.errors()
        )
        parser.error(problems)
    raise ConfigurationError("unreachable")  # parser.error exits
