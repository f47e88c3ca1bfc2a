"""The API reference (``docs/api.md``) and the agent summary (``docs/SKILL.md``) from the contracts."""

from __future__ import annotations

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from ._model import Access, Api, MethodContract

COMMAND = "uv run python -m bioengine_common.contracts --write docs"
GENERATED = (
    f"<!-- Generated from bioengine_common.contracts by `{COMMAND}`: edit the contracts, not this file. -->"
)

_WHO = {Access.ANYONE: "anyone", Access.ADMIN: "admins"}
#: Bounds of a pydantic field: the attribute of its metadata item (``annotated_types.Gt``...) -> sign.
_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _cell(text: str) -> str:
    """Text for a Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _field(contract: MethodContract, name: str) -> FieldInfo:
    default = contract.parameters[name].default
    assert isinstance(default, FieldInfo), f"{contract.name}.{name} needs a Field(...) default"
    return default


def _default(field: FieldInfo) -> str:
    return "required" if field.default is PydanticUndefined else f"`{field.default!r}`"


def _constraints(field: FieldInfo) -> str:
    parts = []
    for item in field.metadata:
        for attribute, sign in _BOUNDS.items():
            if getattr(item, attribute, None) is not None:
                parts.append(f"{sign} {getattr(item, attribute)}")
    return ", ".join(parts)


def who(contract: MethodContract) -> str:
    text = _WHO[contract.access]
    if contract.admin_unless:
        text += ", or anyone giving " + " and ".join(f"`{n}`" for n in contract.admin_unless)
    return text


def _call(contract: MethodContract) -> str:
    """``name(a, b=default, ...)`` as a caller writes it."""
    parts = []
    for name in contract.parameters:
        field = _field(contract, name)
        parts.append(name if field.default is PydanticUndefined else f"{name}={field.default!r}")
    return f"{contract.name}({', '.join(parts)})"


def _section(contract: MethodContract) -> list[str]:
    lines = [f"## `{contract.name}`", "", contract.doc, ""]
    lines.append(f"- **Who may call:** {who(contract)}")
    returns = contract.annotations.get("return", "None")
    lines.append(f"- **Returns:** `{returns}`")
    if contract.forwarded:
        lines.append(
            f"- **Implemented by:** `{contract.service_id}.{contract.name}` (the gateway forwards the caller)"
        )
        lines.append(f"- **Gateway call timeout:** {contract.timeout.describe()}")
    else:
        lines.append("- **Implemented by:** the gateway itself")
    if contract.callbacks:
        names = ", ".join(f"`{n}`" for n in contract.callbacks)
        lines.append(f"- **Callbacks:** {names} are functions of the caller, called while the method runs")
    lines.append("")
    if contract.parameters:
        lines += [
            "| Parameter | Type | Default | Constraints | Description |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name in contract.parameters:
            field = _field(contract, name)
            lines.append(
                f"| `{name}` | `{_cell(contract.annotations[name])}` | {_cell(_default(field))} "
                f"| {_cell(_constraints(field))} | {_cell(field.description or '')} |"
            )
    else:
        lines.append("No parameters.")
    lines.append("")
    errors = contract.errors()
    if errors:
        lines.append("Errors:")
        lines.append("")
        lines += [f"- `{kind}`: {when}" for kind, when in errors.items()]
        lines.append("")
    return lines


def render_api(api: Api) -> str:
    lines = [
        GENERATED,
        "",
        f"# API of `{api.service_id}`",
        "",
        f"{api.description} Every method is a Hypha RPC method of the service `<workspace>/{api.service_id}`",
        "(visibility public); the schemas clients and AI agents see are built from the same contracts",
        "as this page (`libs/bioengine-common/src/bioengine_common/contracts/worker.py`).",
        "",
        "Errors are the types of `bioengine_common.errors` (`InvalidRequest`, `PermissionDenied`,",
        "`NotFound`, `ServiceUnavailable`, `ResourceUnavailable`, `AppFailed`) or Python's `TimeoutError`;",
        'the caller gets the type\'s name and its one-line message. Methods marked "admins" raise',
        "`PermissionDenied` for anyone not in the worker's admin list. A method implemented by an",
        "internal service is forwarded with the original caller, and raises `ServiceUnavailable` when",
        "that service is down or does not answer within the gateway's call timeout (a call that timed",
        "out is not repeated: it may still be running).",
        "",
        "| Method | Who may call | Implemented by | Summary |",
        "| --- | --- | --- | --- |",
    ]
    for contract in api:
        lines.append(
            f"| [`{contract.name}`](#{contract.name}) | {_cell(who(contract))} | `{contract.service_id}` "
            f"| {_cell(contract.summary)} |"
        )
    lines.append("")
    for contract in api:
        lines += _section(contract)
    return "\n".join(lines).rstrip() + "\n"


def render_skill(api: Api) -> str:
    lines = [
        "---",
        f"name: {api.service_id}",
        f"description: {api.description}",
        "---",
        "",
        GENERATED,
        "",
        f"# Using a BioEngine worker (`{api.service_id}`)",
        "",
        "A BioEngine worker turns compute (a workstation, an HPC cluster through SLURM, or an existing",
        "Ray cluster) into one Hypha service: it deploys AI model apps on Ray Serve (each app then has",
        "its own Hypha service), streams Zarr datasets over HTTP, and runs Python on the cluster for",
        "admins. Connect with hypha-rpc (`pip install hypha-rpc`), with the server URL, workspace and",
        "token the worker's operator gives you:",
        "",
        "```python",
        "from hypha_rpc import connect_to_server",
        "",
        'server = await connect_to_server({"server_url": URL, "workspace": WORKSPACE, "token": TOKEN})',
        f'worker = await server.get_service(f"{{WORKSPACE}}/{api.service_id}")',
        "status = await worker.get_status()",
        "```",
        "",
        'Call methods with keyword arguments. "admin" methods need a token of a user in the worker\'s',
        "admin list (`check_access()` says whether you are one); errors arrive as the error's type and",
        "a one-line message. To use an app: `deploy_app(...)`, then `wait_for_app(application_id)`,",
        'then `server.get_service(status["service_ids"][0]["websocket_service_id"])`.',
        "Full reference: `docs/api.md`.",
        "",
        "## Methods",
        "",
    ]
    for contract in api:
        access = "" if contract.access is Access.ANYONE else f" ({who(contract).replace('admins', 'admin')})"
        lines.append(f"- `{_call(contract)}`{access}: {contract.summary}")
        for name in contract.parameters:
            field = _field(contract, name)
            described = " ".join((field.description or "").split())
            lines.append(f"  - `{name}` (`{contract.annotations[name]}`): {described}")
    return "\n".join(lines).rstrip() + "\n"


def render(api: Api) -> dict[str, str]:
    """File name -> content of each generated document."""
    return {"api.md": render_api(api), "SKILL.md": render_skill(api)}
