"""How a method contract is declared and applied.

A contract is a stub function (parameters with pydantic ``Field`` defaults, return annotation,
docstring) plus the facts around it: which service implements it, who may call it and how long
the gateway waits for it. Both sides are built from it: the internal service's implementation
(:meth:`MethodContract.implementation`, which checks the implementation's parameters) and the
gateway's method (:meth:`MethodContract.as_method`). The schema clients see is hypha-rpc's
``schema_method`` applied to the contract's signature.
"""

from __future__ import annotations

import enum
import functools
import inspect
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from hypha_rpc.utils.schema import schema_method
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .._lifecycle import CallerField

#: The service id of each short service name a contract may name.
SERVICE_IDS = {
    "gateway": "bioengine-worker",
    "cluster": "bioengine-cluster",
    "apps": "bioengine-apps",
    "datasets": "bioengine-datasets",
}


class Access(enum.Enum):
    """Who may call a method."""

    ANYONE = "anyone"
    ADMIN = "admin"


@dataclass(frozen=True)
class CallTimeout:
    """How long the gateway waits for the internal service.

    ``seconds`` (None: the gateway's ``--call-timeout``), plus the value of parameter ``plus``
    when given (a method that itself waits that long), only when parameter ``when`` is true.
    """

    seconds: float | None = None
    plus: str | None = None
    when: str | None = None

    def for_call(self, arguments: Mapping[str, Any]) -> float | None:
        """The timeout of one call with these arguments (None: the gateway's default)."""
        if self.plus is None or (self.when is not None and not arguments.get(self.when)):
            return self.seconds
        return (self.seconds or 0.0) + float(arguments[self.plus])

    def describe(self) -> str:
        base = f"{self.seconds:g} s" if self.seconds is not None else "the gateway's `--call-timeout` (10 s)"
        if self.plus is None:
            return base
        extra = f" + `{self.plus}`"
        return base + extra + (f" when `{self.when}` is true" if self.when else "")


def _hints(function: Callable[..., Any]) -> dict[str, Any]:
    return typing.get_type_hints(function)


def _defaults(parameters: Iterable[inspect.Parameter]) -> dict[str, Any]:
    """The default of each parameter that has one (a ``Field``'s own default)."""
    defaults = {}
    for parameter in parameters:
        default = parameter.default.default if isinstance(parameter.default, FieldInfo) else parameter.default
        if not any(default is none for none in (inspect.Parameter.empty, PydanticUndefined, Ellipsis)):
            defaults[parameter.name] = default
    return defaults


def _with_defaults(function: Callable[..., Any], signature: inspect.Signature) -> Callable[..., Any]:
    """``function`` called by name with every parameter the caller left out set to its default
    (a ``Field``'s). hypha-rpc's schema wrapper does the same with ``inspect`` and pydantic on
    every call (about 0.07 ms, on each hop of a forwarded call); here the names and defaults are
    worked out once. A call it cannot map by name alone goes through ``inspect`` (its errors)."""
    names = list(signature.parameters)
    known = frozenset(names)
    defaults = _defaults(signature.parameters.values())

    @functools.wraps(function)
    async def call(*args: Any, **kwargs: Any) -> Any:
        if len(args) <= 1 and known.issuperset(kwargs):  # (self,) and names of the contract
            arguments = dict(zip(names, args, strict=False))
            arguments.update(kwargs)
        else:
            arguments = dict(signature.bind_partial(*args, **kwargs).arguments)
        for name, default in defaults.items():
            if name not in arguments:
                arguments[name] = default
        if len(arguments) < len(names):
            missing = next(name for name in names if name not in arguments)
            raise TypeError(f"Missing required argument: '{missing}'")
        return await function(**arguments)

    return call


@dataclass(frozen=True)
class MethodContract:
    """One public method of the worker, declared once."""

    stub: Callable[..., Any]
    service: str
    access: Access
    timeout: CallTimeout = CallTimeout()
    #: Admin rights are not needed when any of these parameters is given (upload_app into
    #: another workspace with its token).
    admin_unless: tuple[str, ...] = ()
    #: Parameters that are callbacks of the caller: the gateway relays them.
    callbacks: tuple[str, ...] = ()
    #: Errors the method raises: error type -> when.
    raises: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.service not in SERVICE_IDS:
            raise ValueError(f"{self.name}: unknown service '{self.service}'")
        if not self.stub.__doc__:
            raise ValueError(f"{self.name}: a contract needs a docstring")
        names = set(self.parameters)
        for name in (*self.admin_unless, *self.callbacks, self.timeout.plus, self.timeout.when):
            if name is not None and name not in names:
                raise ValueError(f"{self.name}: '{name}' is not one of its parameters")

    # ---- what it declares -----------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.stub.__name__

    @property
    def doc(self) -> str:
        return inspect.cleandoc(self.stub.__doc__ or "")

    @property
    def summary(self) -> str:
        """The first paragraph of the docstring, on one line."""
        return " ".join(self.doc.split("\n\n")[0].split())

    @property
    def forwarded(self) -> bool:
        """Implemented by an internal service (the gateway forwards it)."""
        return self.service != "gateway"

    @property
    def service_id(self) -> str:
        return SERVICE_IDS[self.service]

    @functools.cached_property  # read on every forwarded call: resolve the hints once
    def parameters(self) -> dict[str, inspect.Parameter]:
        """The contract's own parameters (no self, caller or context), annotations resolved."""
        hints = _hints(self.stub)
        return {
            name: parameter.replace(annotation=hints[name])
            for name, parameter in inspect.signature(self.stub).parameters.items()
        }

    @property
    def annotations(self) -> dict[str, str]:
        """Each parameter's type as written in the contract (for the docs); ``return`` too."""
        written = dict(self.stub.__annotations__)
        return {name: str(value) for name, value in written.items()}

    @property
    def returns(self) -> Any:
        return _hints(self.stub).get("return", Any)

    @functools.cached_property
    def _defaults(self) -> dict[str, Any]:
        return _defaults(self.parameters.values())

    def given(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """``arguments`` without those left at their default (the very default object, as the
        call filled it in): the implementing service fills them in alike, and a forwarded call
        is smaller to send and to read."""
        defaults, missing = self._defaults, object()
        return {name: value for name, value in arguments.items() if defaults.get(name, missing) is not value}

    def requires_admin(self, arguments: Mapping[str, Any]) -> bool:
        """Whether a call with these arguments needs an admin."""
        if self.access is not Access.ADMIN:
            return False
        return not any(arguments.get(name) is not None for name in self.admin_unless)

    def errors(self) -> dict[str, str]:
        """Every error the method may raise (its own, the admin rule's, the gateway's)."""
        errors = dict(self.raises)
        if self.access is Access.ADMIN:
            rule = "the caller is not an admin"
            if self.admin_unless:
                rule += " (and gives none of " + ", ".join(f"`{n}`" for n in self.admin_unless) + ")"
            errors.setdefault("PermissionDenied", rule)
        if self.forwarded:
            errors.setdefault(
                "ServiceUnavailable",
                f"`{self.service_id}` is down or does not answer within the call timeout",
            )
        return errors

    # ---- building methods from it ---------------------------------------------------------------
    def signature(self, *, caller: bool) -> inspect.Signature:
        """``(self, <parameters>, [caller], context)`` with the contract's fields as defaults."""
        keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
        parameters = [inspect.Parameter("self", keyword), *self.parameters.values()]
        if caller:
            parameters.append(
                inspect.Parameter("caller", keyword, default=CallerField, annotation=dict | None)
            )
        parameters.append(inspect.Parameter("context", keyword, default=None, annotation=dict | None))
        return inspect.Signature(parameters, return_annotation=self.returns)

    @functools.cached_property
    def _call_signature(self) -> inspect.Signature:
        return self.signature(caller=False)

    def call_arguments(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
        """A call ``(self, *args, **kwargs)`` of a method without ``caller``: the contract's
        parameters by name and the ``context``."""
        bound = self._call_signature.bind(*args, **kwargs).arguments
        return {name: bound[name] for name in self.parameters if name in bound}, bound.get("context")

    def as_method(self, function: Callable[..., Any], *, caller: bool) -> Callable[..., Any]:
        """``function`` as a schema method with the contract's signature, name and docstring.

        ``function`` is called with every parameter (``self`` too) filled in, by name.
        """

        async def method(*args: Any, **kwargs: Any) -> Any:
            return await function(*args, **kwargs)

        signature = self.signature(caller=caller)
        method.__signature__ = signature  # type: ignore[attr-defined]
        method.__doc__ = self.doc
        method.__name__ = method.__qualname__ = self.name
        method.__module__ = function.__module__
        # hypha-rpc's schema_method gives the schema; the call itself fills in the defaults.
        filled = _with_defaults(method, signature)
        filled.__schema__ = schema_method(method).__schema__  # type: ignore[attr-defined]
        filled.__contract__ = self  # type: ignore[attr-defined]
        return filled

    def implementation(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator of the method that implements this contract: checks that its parameters are
        the contract's (same names, order and types, no defaults of its own) followed by
        ``caller`` (internal services) and ``context``, and gives it the contract's docstring
        and schema."""
        problems = list(self.mismatches(function))
        if problems:
            raise TypeError(f"{function.__qualname__} does not match its contract: " + "; ".join(problems))
        if self.access is Access.ADMIN:
            function = self._admin_checked(function)
        return self.as_method(function, caller=self.forwarded)

    @functools.cached_property
    def _implementation_signature(self) -> inspect.Signature:
        return self.signature(caller=self.forwarded)

    def _admin_checked(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` behind the contract's admin rule, applied by the implementing service
        itself (its ``require_admin``, which also decides whether a forwarded ``caller`` is
        trusted): a call that does not come through the gateway meets the same rule."""
        contract = self

        @functools.wraps(function)
        async def checked(*args: Any, **kwargs: Any) -> Any:
            bound = contract._implementation_signature.bind(*args, **kwargs).arguments
            if contract.requires_admin(bound):
                bound["self"].require_admin(bound.get("context"), bound.get("caller"), contract.name)
            return await function(*args, **kwargs)

        return checked

    def mismatches(self, function: Callable[..., Any]) -> Iterator[str]:
        """How ``function``'s parameters differ from the contract's (nothing when they match)."""
        if function.__name__ != self.name:
            yield f"its name is '{function.__name__}', the contract's '{self.name}'"
        names = list(inspect.signature(function).parameters)[1:]
        expected = [*self.parameters, *(["caller"] if self.forwarded else []), "context"]
        if names != expected:
            yield f"parameters {names}, the contract has {expected}"
            return
        hints = _hints(function)
        for name, parameter in self.parameters.items():
            if hints.get(name) != parameter.annotation:
                yield f"'{name}' is {hints.get(name)}, the contract says {parameter.annotation}"
            if inspect.signature(function).parameters[name].default is not inspect.Parameter.empty:
                yield f"'{name}' has a default of its own (the contract declares it)"
        if hints.get("return", Any) != self.returns:
            yield f"returns {hints.get('return')}, the contract says {self.returns}"

    def method_schema(self, *, caller: bool) -> dict[str, Any]:
        """The ``__schema__`` of a method built from this contract."""

        async def stub(*args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError

        return dict(self.as_method(stub, caller=caller).__schema__)  # type: ignore[attr-defined]

    def schema(self, *, caller: bool) -> dict[str, Any]:
        """The schema hypha-rpc registers for a method of this contract, as ``get_service_info``
        shows it (``context`` is not listed)."""
        schema = self.method_schema(caller=caller)
        parameters = dict(schema["parameters"])
        parameters["properties"] = {k: v for k, v in parameters["properties"].items() if k != "context"}
        schema["parameters"] = parameters
        return schema


class Api:
    """The contracts of one public service, in declaration order."""

    def __init__(self, service_id: str, description: str) -> None:
        self.service_id = service_id
        self.description = description
        self.methods: dict[str, MethodContract] = {}

    def method(
        self,
        service: str,
        access: Access,
        *,
        timeout: CallTimeout = CallTimeout(),
        admin_unless: tuple[str, ...] = (),
        callbacks: tuple[str, ...] = (),
        raises: Mapping[str, str] | None = None,
    ) -> Callable[[Callable[..., Any]], MethodContract]:
        """Decorator: the stub function below declares one method of this API."""

        def declare(stub: Callable[..., Any]) -> MethodContract:
            contract = MethodContract(
                stub, service, access, timeout, admin_unless, callbacks, dict(raises or {})
            )
            if contract.name in self.methods:
                raise ValueError(f"{contract.name} is declared twice")
            self.methods[contract.name] = contract
            return contract

        return declare

    def __iter__(self) -> Iterator[MethodContract]:
        return iter(self.methods.values())

    def __getitem__(self, name: str) -> MethodContract:
        return self.methods[name]

    def of_service(self, service: str) -> list[MethodContract]:
        return [c for c in self if c.service == service]


def check_implementations(cls: type, api: Api, service: str) -> list[str]:
    """What is wrong with ``cls`` as the implementation of ``service``'s contracts of ``api``
    (empty when each contract's method is there, built from that contract)."""
    problems = []
    for contract in api.of_service(service):
        method = getattr(cls, contract.name, None)
        if method is None:
            problems.append(f"{cls.__name__} has no method '{contract.name}'")
        elif getattr(method, "__contract__", None) is not contract:
            problems.append(f"{cls.__name__}.{contract.name} is not built from its contract")
        elif method.__schema__ != contract.method_schema(caller=contract.forwarded):
            problems.append(f"{cls.__name__}.{contract.name}'s schema differs from its contract's")
    return problems
