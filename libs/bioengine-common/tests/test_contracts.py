"""The contracts of the public API (pure): how they check implementations, their timeout and admin
rules, and the generated docs kept in step with them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import Field

from bioengine_common import PermissionDenied
from bioengine_common.contracts import WORKER, Access, Api, CallTimeout, worker
from bioengine_common.contracts.__main__ import main
from bioengine_common.contracts._docs import COMMAND, render

ROOT = Path(__file__).resolve().parents[3]

API = Api("test-service", "A service for these tests.")


@API.method(
    "apps", Access.ADMIN, timeout=CallTimeout(30.0, plus="timeout", when="wait"), admin_unless=("token",)
)
async def act(
    target: str = Field(..., description="What to act on."),
    wait: bool = Field(False, description="Wait for it."),
    timeout: float = Field(60.0, gt=0, description="Seconds to wait."),
    token: str | None = Field(None, description="Act with this token instead."),
) -> dict:
    """Act on a target."""


ADMIN = {"user": {"id": "admin"}}


class Service:
    """Implements ``act``; its admin check is the one BioEngineService gives every service."""

    def __init__(self) -> None:
        self.checked: list[tuple[Any, Any, str]] = []

    def require_admin(self, context: Any, caller: Any, action: str) -> dict:
        self.checked.append((context, caller, action))
        who = caller if caller is not None else context
        if ((who or {}).get("user") or {}).get("id") != "admin":
            raise PermissionDenied(f"'{action}' (admin only)")
        return who

    @act.implementation
    async def act(
        self,
        target: str,
        wait: bool,
        timeout: float,
        token: str | None,
        caller: dict | None = None,
        context: dict | None = None,
    ) -> dict:
        return {"target": target, "wait": wait, "timeout": timeout, "caller": caller}


def test_the_committed_docs_are_generated_from_the_contracts():
    for name, text in render(WORKER).items():
        path = ROOT / "docs" / name
        assert path.exists() and path.read_text() == text, f"docs/{name} is stale: run `{COMMAND}`"


def test_check_reports_stale_docs_with_the_command_to_fix_them(tmp_path, capsys):
    assert main(["--check", str(tmp_path)]) == 1
    assert COMMAND in capsys.readouterr().err
    assert main(["--write", str(tmp_path)]) == 0
    assert main(["--check", str(tmp_path)]) == 0


def test_an_implementation_gets_the_contracts_docstring_and_schema():
    method = Service.act
    assert method.__doc__ == "Act on a target."
    assert method.__schema__ == act.method_schema(caller=True)
    properties = method.__schema__["parameters"]["properties"]
    assert list(properties) == ["target", "wait", "timeout", "token", "caller", "context"]
    assert properties["timeout"] == {
        "default": 60.0,
        "description": "Seconds to wait.",
        "exclusiveMinimum": 0,
        "type": "number",
    }
    assert method.__schema__["parameters"]["required"] == ["target"]


async def test_an_implementation_is_called_with_the_contracts_defaults():
    assert await Service().act("x", context=ADMIN) == {
        "target": "x",
        "wait": False,
        "timeout": 60.0,
        "caller": None,
    }
    assert await Service().act(target="y", timeout=5, context=ADMIN) == {
        "target": "y",
        "wait": False,
        "timeout": 5,
        "caller": None,
    }


async def test_a_bad_call_is_refused_naming_the_argument():
    with pytest.raises(TypeError, match="got an unexpected keyword argument 'bogus'"):
        await Service().act(target="x", bogus=1, context=ADMIN)
    with pytest.raises(TypeError, match="Missing required argument: 'target'"):
        await Service().act(wait=True, context=ADMIN)
    with pytest.raises(TypeError, match="multiple values for argument 'target'"):
        await Service().act("x", target="y", context=ADMIN)
    with pytest.raises(TypeError, match="too many positional arguments"):
        await Service().act("x", True, 1.0, None, None, ADMIN, "extra")


async def test_an_implementation_applies_the_contracts_admin_rule_itself():
    service = Service()
    with pytest.raises(PermissionDenied, match=r"'act' \(admin only\)"):
        await service.act("x", context={"user": {"id": "someone"}})
    # A forwarded caller is what the service checks (it decides whether to trust it).
    forwarded = await service.act("x", caller=ADMIN, context={"user": {"id": "gateway"}})
    assert forwarded["caller"] == ADMIN
    with pytest.raises(PermissionDenied):
        await service.act("x", caller={"user": {"id": "someone"}}, context=ADMIN)
    # admin_unless: giving the token needs no admin, and the check is not even asked for.
    before = len(service.checked)
    assert (await service.act("x", token="t", context={"user": {"id": "someone"}}))["target"] == "x"
    assert len(service.checked) == before
    assert [action for _, _, action in service.checked] == ["act"] * before


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("async def act(self, target: str, wait: bool, timeout: float, token: str | None, context=None) -> dict: ...",
         "parameters"),
        ("async def act(self, target: str, wait: bool, timeout: int, token: str | None, caller=None, context=None)"
         " -> dict: ...", "'timeout' is <class 'int'>"),
        ("async def act(self, target: str, wait: bool = True, timeout: float = 1, token: str | None = None, "
         "caller=None, context=None) -> dict: ...", "'wait' has a default of its own"),
        ("async def act(self, target: str, wait: bool, timeout: float, token: str | None, caller=None, "
         "context=None) -> list: ...", "returns"),
        ("async def other(self, target: str, wait: bool, timeout: float, token: str | None, caller=None, "
         "context=None) -> dict: ...", "its name is 'other'"),
    ],
)  # fmt: skip
def test_an_implementation_that_drifts_from_its_contract_is_refused_at_import(source, problem):
    namespace: dict = {}
    exec(source, namespace)
    function = next(v for k, v in namespace.items() if k in ("act", "other"))
    with pytest.raises(TypeError, match="does not match its contract") as info:
        act.implementation(function)
    assert problem in str(info.value)


def test_the_call_timeout_rule():
    assert act.timeout.for_call({"wait": False, "timeout": 100}) == 30.0
    assert act.timeout.for_call({"wait": True, "timeout": 100}) == 130.0
    assert CallTimeout().for_call({}) is None  # the gateway's --call-timeout
    assert CallTimeout(30.0, plus="timeout_seconds").for_call({"timeout_seconds": 5}) == 35.0
    assert worker.deploy_app.timeout.for_call({"wait": True, "timeout": 300.0}) == 420.0
    assert worker.run_code.timeout.for_call({"timeout": 180.0}) == 210.0


def test_the_admin_rule():
    assert act.requires_admin({"target": "x", "token": None})
    assert not act.requires_admin({"target": "x", "token": "t"})
    assert not worker.get_app_status.requires_admin({})
    assert worker.upload_app.requires_admin({"files": []})
    assert not worker.upload_app.requires_admin({"files": [], "workspace": "w", "hypha_token": "t"})


def test_every_contract_declares_its_errors_and_fields():
    for contract in WORKER:
        for name, parameter in contract.parameters.items():
            assert parameter.default.description, f"{contract.name}.{name} has no description"
        if contract.access is Access.ADMIN:
            assert "PermissionDenied" in contract.errors()
        if contract.forwarded:
            assert "ServiceUnavailable" in contract.errors()


def test_a_contract_names_only_its_own_parameters():
    with pytest.raises(ValueError, match="'nope' is not one of its parameters"):

        @Api("x", "x").method("apps", Access.ADMIN, callbacks=("nope",))
        async def f() -> None:
            """Doc."""


def test_a_forwarded_call_leaves_out_the_arguments_at_their_default():
    filled = {"target": "x", "wait": False, "timeout": 60.0, "token": None}
    filled["wait"] = act.parameters["wait"].default.default  # the default object itself
    filled["token"] = act.parameters["token"].default.default
    explicit = float("60")  # equal to the default but given by the caller: it goes on
    assert act.given({**filled, "timeout": explicit}) == {"target": "x", "timeout": 60.0}
    assert act.given({"target": "x", "wait": True}) == {"target": "x", "wait": True}
