"""The CLI prints an error raised by a remote service as one line; ``--debug`` prints it all.

The ``*_TEXT`` constants are real: the text of the ``RemoteException`` that hypha-rpc raised in a
client calling the methods named below on a running worker (``bioengine-worker`` of the
single-machine launcher), captured as they came.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bioengine_common import error_summary

# An anonymous client calling run_code (admin only): the gateway's own PermissionDenied.
ANONYMOUS_RUN_CODE_TEXT = (
    "RemoteError:Traceback (most recent call last):\n"
    "             ^^^^^^^^^^^^\n"
    '  File "/work/main/libs/bioengine-common/src/bioengine_common/_lifecycle.py", line 207, in guarded\n'
    "    return await method(*args, **kwargs)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/libs/bioengine-common/src/bioengine_common/_telemetry.py", line 97, in wrapper\n'
    "    return await function(*args, **kwargs)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/hypha_rpc/utils/schema.py", line 480, in wrapper\n'
    "    ret = await original_func(*new_args, **new_kwargs)\n"
    "          ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/services/gateway-svc/src/bioengine_gateway/_service.py", line 223, in run_code\n'
    "    check_permissions(context, self.admin_users, \"'run_code' (admin only)\")\n"
    '  File "/work/main/libs/bioengine-common/src/bioengine_common/_permissions.py", line 93, in check_permissions\n'
    "    raise PermissionDenied(f\"User '{who}' is not authorized to access {resource_name}\")\n"
    "bioengine_common.errors.PermissionDenied: User 'anonymouz-tiny-chickadee-31971120' is not authorized to access 'run_code' (admin only)\n"
    "Exception: Traceback (most recent call last):\n"
    "             ^^^^^^^^^^^^\n"
    '  File "/work/main/libs/bioengine-common/src/bioengine_common/_lifecycle.py", line 207, in guarded\n'
    "    return await method(*args, **kwargs)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/libs/bioengine-common/src/bioengine_common/_telemetry.py", line 97, in wrapper\n'
    "    return await function(*args, **kwargs)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/hypha_rpc/utils/schema.py", line 480, in wrapper\n'
    "    ret = await original_func(*new_args, **new_kwargs)\n"
    "          ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/services/gateway-svc/src/bioengine_gateway/_service.py", line 223, in run_code\n'
    "    check_permissions(context, self.admin_users, \"'run_code' (admin only)\")\n"
    '  File "/work/main/libs/bioengine-common/src/bioengine_common/_permissions.py", line 93, in check_permissions\n'
    "    raise PermissionDenied(f\"User '{who}' is not authorized to access {resource_name}\")\n"
    "bioengine_common.errors.PermissionDenied: User 'anonymouz-tiny-chickadee-31971120' is not authorized to access 'run_code' (admin only)\n"
)

# stop_app of an app that is not deployed: apps-svc's NotFound, passed on by the gateway (a
# remote traceback inside a remote traceback).
STOP_APP_CHAINED_TEXT = (
    "RemoteError:Traceback (most recent call last):\n"
    "             ^^^^^^^^^^^^\n"
    '  File "/work/main/libs/bioengine-common/src/bioengine_common/_lifecycle.py", line 207, in guarded\n'
    "    return await method(*args, **kwargs)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/libs/bioengine-common/src/bioengine_common/_telemetry.py", line 97, in wrapper\n'
    "    return await function(*args, **kwargs)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/hypha_rpc/utils/schema.py", line 480, in wrapper\n'
    "    ret = await original_func(*new_args, **new_kwargs)\n"
    "          ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/services/gateway-svc/src/bioengine_gateway/_service.py", line 352, in stop_app\n'
    '    await self.call("apps", "stop_app", context, call_timeout=30.0, application_id=application_id)\n'
    '  File "/work/main/services/gateway-svc/src/bioengine_gateway/_service.py", line 119, in call\n'
    "    return await asyncio.wait_for(getattr(proxy, method)(**kwargs), timeout)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/root/.pyenv/versions/3.11.7/lib/python3.11/asyncio/tasks.py", line 489, in wait_for\n'
    "    return fut.result()\n"
    "           ^^^^^^^^^^^^\n"
    "hypha_rpc.rpc.RemoteException: RemoteError:Traceback (most recent call last):\n"
    "             ^^^^^^^^^^^^\n"
    '  File "/work/main/libs/bioengine-common/src/bioengine_common/_lifecycle.py", line 207, in guarded\n'
    "    return await method(*args, **kwargs)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/libs/bioengine-common/src/bioengine_common/_telemetry.py", line 97, in wrapper\n'
    "    return await function(*args, **kwargs)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/hypha_rpc/utils/schema.py", line 480, in wrapper\n'
    "    ret = await original_func(*new_args, **new_kwargs)\n"
    "          ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/services/apps-svc/src/bioengine_apps/_service.py", line 840, in stop_app\n'
    "    self.records[application_id] = record\n"
    "        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    "bioengine_common.errors.NotFound: no app 'nonexist' is deployed\n"
    "Exception: Traceback (most recent call last):\n"
    "             ^^^^^^^^^^^^\n"
    '  File "/work/main/libs/bioengine-common/src/bioengine_common/_lifecycle.py", line 207, in guarded\n'
    "    return await method(*args, **kwargs)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/libs/bioengine-common/src/bioengine_common/_telemetry.py", line 97, in wrapper\n'
    "    return await function(*args, **kwargs)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/hypha_rpc/utils/schema.py", line 480, in wrapper\n'
    "    ret = await original_func(*new_args, **new_kwargs)\n"
    "          ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/services/apps-svc/src/bioengine_apps/_service.py", line 840, in stop_app\n'
    "    self.records[application_id] = record\n"
    "        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    "bioengine_common.errors.NotFound: no app 'nonexist' is deployed\n"
    "\n"
    "Exception: Traceback (most recent call last):\n"
    "             ^^^^^^^^^^^^\n"
    '  File "/work/main/libs/bioengine-common/src/bioengine_common/_lifecycle.py", line 207, in guarded\n'
    "    return await method(*args, **kwargs)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/libs/bioengine-common/src/bioengine_common/_telemetry.py", line 97, in wrapper\n'
    "    return await function(*args, **kwargs)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/hypha_rpc/utils/schema.py", line 480, in wrapper\n'
    "    ret = await original_func(*new_args, **new_kwargs)\n"
    "          ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/services/gateway-svc/src/bioengine_gateway/_service.py", line 352, in stop_app\n'
    '    await self.call("apps", "stop_app", context, call_timeout=30.0, application_id=application_id)\n'
    '  File "/work/main/services/gateway-svc/src/bioengine_gateway/_service.py", line 119, in call\n'
    "    return await asyncio.wait_for(getattr(proxy, method)(**kwargs), timeout)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/root/.pyenv/versions/3.11.7/lib/python3.11/asyncio/tasks.py", line 489, in wait_for\n'
    "    return fut.result()\n"
    "           ^^^^^^^^^^^^\n"
    "hypha_rpc.rpc.RemoteException: RemoteError:Traceback (most recent call last):\n"
    "             ^^^^^^^^^^^^\n"
    '  File "/work/main/libs/bioengine-common/src/bioengine_common/_lifecycle.py", line 207, in guarded\n'
    "    return await method(*args, **kwargs)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/libs/bioengine-common/src/bioengine_common/_telemetry.py", line 97, in wrapper\n'
    "    return await function(*args, **kwargs)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/hypha_rpc/utils/schema.py", line 480, in wrapper\n'
    "    ret = await original_func(*new_args, **new_kwargs)\n"
    "          ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/services/apps-svc/src/bioengine_apps/_service.py", line 840, in stop_app\n'
    "    self.records[application_id] = record\n"
    "        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    "bioengine_common.errors.NotFound: no app 'nonexist' is deployed\n"
    "Exception: Traceback (most recent call last):\n"
    "             ^^^^^^^^^^^^\n"
    '  File "/work/main/libs/bioengine-common/src/bioengine_common/_lifecycle.py", line 207, in guarded\n'
    "    return await method(*args, **kwargs)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/libs/bioengine-common/src/bioengine_common/_telemetry.py", line 97, in wrapper\n'
    "    return await function(*args, **kwargs)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/hypha_rpc/utils/schema.py", line 480, in wrapper\n'
    "    ret = await original_func(*new_args, **new_kwargs)\n"
    "          ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/services/apps-svc/src/bioengine_apps/_service.py", line 840, in stop_app\n'
    "    self.records[application_id] = record\n"
    "        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    "bioengine_common.errors.NotFound: no app 'nonexist' is deployed\n"
    "\n"
)

# server.get_service of a service nobody registered: the Hypha server's own KeyError.
GET_SERVICE_TEXT = (
    "RemoteError:Traceback (most recent call last):\n"
    "             ^^^^^^^^^^^^\n"
    '  File "/work/main/infra/hypha-server/.venv/lib/python3.11/site-packages/hypha_rpc/utils/schema.py", line 480, in wrapper\n'
    "    ret = await original_func(*new_args, **new_kwargs)\n"
    "          ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/infra/hypha-server/.venv/lib/python3.11/site-packages/hypha/core/workspace.py", line 3118, in get_service\n'
    "    raise exp\n"
    '  File "/work/main/infra/hypha-server/.venv/lib/python3.11/site-packages/hypha/core/workspace.py", line 3052, in get_service\n'
    "    svc_info = await self.get_service_info(\n"
    "               ^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/infra/hypha-server/.venv/lib/python3.11/site-packages/hypha_rpc/utils/schema.py", line 480, in wrapper\n'
    "    ret = await original_func(*new_args, **new_kwargs)\n"
    "          ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/infra/hypha-server/.venv/lib/python3.11/site-packages/hypha/core/workspace.py", line 2551, in get_service_info\n'
    '    raise KeyError(f"Service not found: {service_id}@{app_id}")\n'
    "KeyError: 'Service not found: bioengine/*:nothing-here@*'\n"
    "Exception: Traceback (most recent call last):\n"
    "             ^^^^^^^^^^^^\n"
    '  File "/work/main/infra/hypha-server/.venv/lib/python3.11/site-packages/hypha_rpc/utils/schema.py", line 480, in wrapper\n'
    "    ret = await original_func(*new_args, **new_kwargs)\n"
    "          ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/infra/hypha-server/.venv/lib/python3.11/site-packages/hypha/core/workspace.py", line 3118, in get_service\n'
    "    raise exp\n"
    '  File "/work/main/infra/hypha-server/.venv/lib/python3.11/site-packages/hypha/core/workspace.py", line 3052, in get_service\n'
    "    svc_info = await self.get_service_info(\n"
    "               ^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/infra/hypha-server/.venv/lib/python3.11/site-packages/hypha_rpc/utils/schema.py", line 480, in wrapper\n'
    "    ret = await original_func(*new_args, **new_kwargs)\n"
    "          ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/infra/hypha-server/.venv/lib/python3.11/site-packages/hypha/core/workspace.py", line 2551, in get_service_info\n'
    '    raise KeyError(f"Service not found: {service_id}@{app_id}")\n'
    "KeyError: 'Service not found: bioengine/*:nothing-here@*'\n"
)

# get_status(bogus=1): a TypeError raised by hypha-rpc's argument binding in the service.
BAD_ARGUMENT_TEXT = (
    "RemoteError:Traceback (most recent call last):\n"
    "             ^^^^^^^^^^^^\n"
    '  File "/work/main/libs/bioengine-common/src/bioengine_common/_lifecycle.py", line 207, in guarded\n'
    "    return await method(*args, **kwargs)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/libs/bioengine-common/src/bioengine_common/_telemetry.py", line 97, in wrapper\n'
    "    return await function(*args, **kwargs)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/hypha_rpc/utils/schema.py", line 479, in wrapper\n'
    "    new_args, new_kwargs = process_arguments(args, kwargs)\n"
    "                           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/hypha_rpc/utils/schema.py", line 434, in process_arguments\n'
    "    new_args, new_kwargs = fill_missing_args_and_kwargs(\n"
    "                           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/hypha_rpc/utils/schema.py", line 142, in fill_missing_args_and_kwargs\n'
    "    bound_args = original_func_sig.bind_partial(*args, **kwargs)\n"
    "                 ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/root/.pyenv/versions/3.11.7/lib/python3.11/inspect.py", line 3219, in bind_partial\n'
    "    return self._bind(args, kwargs, partial=True)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/root/.pyenv/versions/3.11.7/lib/python3.11/inspect.py", line 3201, in _bind\n'
    "    raise TypeError(\n"
    "TypeError: got an unexpected keyword argument 'bogus'\n"
    "Exception: Traceback (most recent call last):\n"
    "             ^^^^^^^^^^^^\n"
    '  File "/work/main/libs/bioengine-common/src/bioengine_common/_lifecycle.py", line 207, in guarded\n'
    "    return await method(*args, **kwargs)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/libs/bioengine-common/src/bioengine_common/_telemetry.py", line 97, in wrapper\n'
    "    return await function(*args, **kwargs)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/hypha_rpc/utils/schema.py", line 479, in wrapper\n'
    "    new_args, new_kwargs = process_arguments(args, kwargs)\n"
    "                           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/hypha_rpc/utils/schema.py", line 434, in process_arguments\n'
    "    new_args, new_kwargs = fill_missing_args_and_kwargs(\n"
    "                           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/hypha_rpc/utils/schema.py", line 142, in fill_missing_args_and_kwargs\n'
    "    bound_args = original_func_sig.bind_partial(*args, **kwargs)\n"
    "                 ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/root/.pyenv/versions/3.11.7/lib/python3.11/inspect.py", line 3219, in bind_partial\n'
    "    return self._bind(args, kwargs, partial=True)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/root/.pyenv/versions/3.11.7/lib/python3.11/inspect.py", line 3201, in _bind\n'
    "    raise TypeError(\n"
    "TypeError: got an unexpected keyword argument 'bogus'\n"
)


class RemoteException(Exception):
    """Stands for hypha_rpc.rpc.RemoteException: only the class name and the text matter."""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            ANONYMOUS_RUN_CODE_TEXT,
            "PermissionDenied: User 'anonymouz-tiny-chickadee-31971120' is not authorized to "
            "access 'run_code' (admin only)",
        ),
        (STOP_APP_CHAINED_TEXT, "NotFound: no app 'nonexist' is deployed"),
        (GET_SERVICE_TEXT, "KeyError: 'Service not found: bioengine/*:nothing-here@*'"),
        (BAD_ARGUMENT_TEXT, "TypeError: got an unexpected keyword argument 'bogus'"),
    ],
)
def test_a_remote_traceback_becomes_its_error_summary(text, expected):
    assert "Traceback (most recent call last)" in text  # the real thing, not a summary
    assert error_summary(RemoteException(text)) == expected


def test_errors_quoted_inside_a_message_lose_their_module_path():
    # The gateway quotes apps-svc's error, which quotes cluster-svc's (seen while Ray starts).
    text = (
        "RemoteError:Traceback (most recent call last):\n"
        '  File "/x/_service.py", line 129, in call\n'
        "    raise ServiceUnavailable(\n"
        "bioengine_common.errors.ServiceUnavailable: bioengine-apps is not available: "
        "bioengine_common.errors.ServiceUnavailable: apps-svc is not connected to the Ray cluster: "
        "bioengine_common.errors.ServiceUnavailable: the Ray cluster is not ready: starting the Ray "
        "cluster (retrying in 3 s)\n"
    )
    assert error_summary(RemoteException(text)) == (
        "ServiceUnavailable: bioengine-apps is not available: ServiceUnavailable: apps-svc is not "
        "connected to the Ray cluster: ServiceUnavailable: the Ray cluster is not ready: starting "
        "the Ray cluster (retrying in 3 s)"
    )


def test_a_message_over_several_lines_is_joined_and_a_bare_error_keeps_its_name():
    text = (
        "Traceback (most recent call last):\n"
        '  File "/x/app.py", line 3, in f\n'
        "    raise ValueError(msg)\n"
        "ValueError: the manifest is invalid:\n"
        "field 'name' is missing\n"
    )
    assert error_summary(RemoteException(text)) == (
        "ValueError: the manifest is invalid: field 'name' is missing"
    )
    bare = (
        'Traceback (most recent call last):\n  File "/x/a.py", line 1, in f\n    raise KeyError\nKeyError\n'
    )
    assert error_summary(RemoteException(bare)) == "KeyError"


def test_local_errors_name_their_own_type():
    assert error_summary(TimeoutError()) == "TimeoutError"
    assert error_summary(ValueError("bad value: 3")) == "ValueError: bad value: 3"
    assert error_summary(RemoteException("bioengine_common.errors.NotFound: no app 'x'")) == (
        "NotFound: no app 'x'"
    )


# ---- the CLI against a real gateway -------------------------------------------------------------


def _bioengine(*args: str, tmp_path) -> subprocess.CompletedProcess[str]:
    """The `bioengine` command of this environment, as a user runs it (no BIOENGINE_* variables,
    its own --workspace-dir so no connection file of a real worker is read)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIOENGINE_")}
    command = [str(Path(sys.executable).with_name("bioengine")), "--workspace-dir", str(tmp_path), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.integration
async def test_the_cli_prints_a_remote_error_as_one_line_and_all_of_it_with_debug(
    hypha_server, start_service, admin_client, tmp_path
):
    from bioengine_common.testing import ADMIN_USER, wait_for_service

    # The gateway alone: its own permission check answers, and apps-svc is missing.
    start_service("gateway", hypha_server)
    await wait_for_service(admin_client, "bioengine-worker")
    where = ["--server-url", hypha_server.url, "--workspace", hypha_server.workspace]

    denied = _bioengine(*where, "--anonymous", "call", "bioengine-worker", "run_code",
                        "--arg", 'code="x"', tmp_path=tmp_path)  # fmt: skip
    assert denied.returncode == 1, denied
    assert denied.stderr.splitlines() == [denied.stderr.strip()], denied.stderr  # one line
    assert denied.stderr.startswith("error: PermissionDenied: User '"), denied.stderr
    assert "is not authorized to access 'run_code' (admin only)" in denied.stderr

    admin = ["--token", hypha_server.mint(ADMIN_USER, "admin")]
    missing = _bioengine(*where, *admin, "call", "bioengine-worker", "stop_app",
                         "--arg", "application_id=nothing", tmp_path=tmp_path)  # fmt: skip
    assert missing.returncode == 1, missing
    line = missing.stderr.strip()
    assert missing.stderr.splitlines() == [line], missing.stderr
    assert line.startswith("error: ServiceUnavailable: bioengine-apps is not available"), line
    assert "Traceback" not in line and "bioengine_common.errors." not in line, line

    debug = _bioengine(*where, *admin, "--debug", "call", "bioengine-worker", "stop_app",
                       "--arg", "application_id=nothing", tmp_path=tmp_path)  # fmt: skip
    assert debug.returncode == 1, debug
    # The remote traceback, the gateway's frames included, then the same one line at the end.
    assert "Traceback (most recent call last)" in debug.stderr
    assert "bioengine_gateway/_service.py" in debug.stderr, debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == line
