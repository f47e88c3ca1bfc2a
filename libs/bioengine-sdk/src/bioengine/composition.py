"""Composition by type hints: from an entry class to the spec of every deployment it needs.

Pure and import-only: ``introspect_app`` reads the decorators' records and ``__init__``
signatures; it never constructs a class. The platform runs it inside Ray (a build task with only
the SDK's dependencies), never in a service process: importing an app's modules runs user code.

The spec is plain JSON (``SPEC_FORMAT``)::

    {"format_version": "0.6.0", "entry": "pkg.mod:Entry",
     "order": ["pkg.mod:Leaf", ..., "pkg.mod:Entry"],      # dependencies before dependants
     "deployments": {"pkg.mod:Entry": {<deployment spec>}, ...}}

and each deployment spec::

    {"key": "pkg.mod:Entry", "module": "pkg.mod", "qualname": "Entry", "class_name": "Entry",
     "deployment_name": "Entry", "ray_actor_options": {...}, "gpu_memory_mb": None,
     "max_ongoing_requests": 10, "serve_options": {"num_replicas": 2, ...},
     "method_schemas": {"ping": {<hypha-rpc schema>}, ...}, "context_methods": ["whoami"],
     "lifecycle_methods": {"async_init": "setup", "smoke_test": None, "health_check": None},
     "init_params": [{"name": "runtime", "kind": "handle", "target": "pkg.mod:Leaf"},
                     {"name": "size", "kind": "value", "annotation": "int", "required": False,
                      "default": 3}],
     "accepts_any_kwargs": False}
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
import typing
from collections.abc import Mapping
from typing import Any

from .decorators import _APP_ATTR, _HOOK_ATTR, _METHOD_ATTR, HOOK_KINDS, app_definition
from .errors import BioEngineUserError, CompositionCycleError

__all__ = [
    "ENTRY_PATTERN",
    "SPEC_FORMAT",
    "class_key",
    "introspect_app",
    "load_entry",
    "validate_application_kwargs",
]

SPEC_FORMAT = "0.6.0"
#: ``entry`` of a 0.6.0 manifest: ``module.sub:Class`` (lower-case dotted module path, class name
#: starting upper-case). ``\Z``, not ``$``, which also matches before a trailing newline.
ENTRY_PATTERN = re.compile(r"^[a-z_]\w*(\.[a-z_]\w*)*:[A-Z]\w*\Z")


def class_key(cls: type) -> str:
    """``module:qualname``: how specs and ``application_kwargs`` name a class."""
    return f"{cls.__module__}:{cls.__qualname__}"


def load_entry(entry: str) -> type:
    """Import ``module:Class`` (inside Ray). A module that fails to import is the author's to fix:
    the message says which and why."""
    if not ENTRY_PATTERN.match(entry):
        raise BioEngineUserError(f"app entry {entry!r} is not of the form 'module.sub:ClassName'")
    module_name, qualname = entry.split(":")
    try:
        module = importlib.import_module(module_name)
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise BioEngineUserError(
            f"Cannot import '{module_name}' for app entry '{entry}': {type(exc).__name__}: {exc}. "
            "The modules of @bioengine.app classes, and what they import at module level, must import "
            "with only the SDK's dependencies (pydantic, hypha-rpc): import the packages of `pip=[...]` "
            "inside methods or an @bioengine.async_init hook"
        ) from exc
    target: Any = module
    for part in qualname.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise BioEngineUserError(f"app entry '{entry}': module '{module_name}' has no class '{qualname}'")
    if not isinstance(target, type):
        raise BioEngineUserError(f"app entry '{entry}' is not a class but {type(target).__name__}")
    return target


def _bioengine_marked(cls: type) -> bool:
    """Looks like an app class without being one: inherits the decorator's record, or has
    methods marked with @bioengine.method or a lifecycle hook."""
    if _APP_ATTR in dir(cls):
        return True
    for klass in cls.__mro__[:-1]:
        for value in vars(klass).values():
            if hasattr(value, _METHOD_ATTR) or getattr(value, _HOOK_ATTR, None) in HOOK_KINDS:
                return True
    return False


def _not_decorated(cls: type, needed_by: str | None) -> BioEngineUserError:
    how = f", needed by '{needed_by}' (an __init__ type hint)" if needed_by else ""
    return BioEngineUserError(
        f"'{class_key(cls)}'{how} is not decorated with @bioengine.app"
        + (" (a subclass of a decorated class needs its own @bioengine.app)" if _APP_ATTR in dir(cls) else "")
    )


def _resolve(annotation: Any, cls: type) -> Any:
    if not isinstance(annotation, str):
        return annotation
    module = sys.modules.get(cls.__module__)
    namespace = dict(vars(module)) if module else {}
    namespace.setdefault(cls.__name__, cls)
    try:
        return eval(annotation, namespace)
    except Exception:
        return annotation  # unresolvable (e.g. imported only under TYPE_CHECKING): a value


def _annotation_text(annotation: Any) -> str | None:
    if annotation is inspect.Parameter.empty:
        return None
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type) and not typing.get_args(annotation):
        if annotation.__module__ == "builtins":
            return annotation.__qualname__
        return f"{annotation.__module__}.{annotation.__qualname__}"
    return repr(annotation).replace("typing.", "")


def _default(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return repr(value)


def _init_params(cls: type) -> tuple[list[dict[str, Any]], list[type], bool]:
    """The ``__init__`` parameters as spec entries, the app classes they need, and whether it
    takes ``**kwargs``."""
    init: Any = cls.__init__  # type: ignore[misc]
    if init is object.__init__:
        return [], [], False
    signature = inspect.signature(init)
    try:
        hints = typing.get_type_hints(init)
    except Exception:
        hints = {}
    params: list[dict[str, Any]] = []
    needs: list[type] = []
    accepts_any = False
    for index, parameter in enumerate(signature.parameters.values()):
        if index == 0:  # self
            continue
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            accepts_any = True
            continue
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        annotation = hints.get(parameter.name, _resolve(parameter.annotation, cls))
        if isinstance(annotation, type) and app_definition(annotation) is not None:
            params.append({"name": parameter.name, "kind": "handle", "target": class_key(annotation)})
            needs.append(annotation)
            continue
        if isinstance(annotation, type) and _bioengine_marked(annotation):
            raise _not_decorated(annotation, class_key(cls))
        entry: dict[str, Any] = {
            "name": parameter.name,
            "kind": "value",
            "annotation": _annotation_text(annotation),
            "required": parameter.default is inspect.Parameter.empty,
        }
        if not entry["required"]:
            entry["default"] = _default(parameter.default)
        params.append(entry)
    return params, needs, accepts_any


def _deployment_spec(cls: type, params: list[dict[str, Any]], accepts_any: bool) -> dict[str, Any]:
    definition = app_definition(cls)
    assert definition is not None
    options = definition.options
    serve_options = dict(options.serve_kwargs)
    name = serve_options.pop("name", None) or cls.__name__
    schemas = {}
    for method_name in definition.methods:
        function = getattr(cls, method_name)
        schemas[method_name] = json.loads(json.dumps(function.__schema__))
    return {
        "key": class_key(cls),
        "module": cls.__module__,
        "qualname": cls.__qualname__,
        "class_name": cls.__name__,
        "deployment_name": name,
        "ray_actor_options": options.actor_options(),
        "gpu_memory_mb": options.gpu_memory_mb,
        "max_ongoing_requests": options.max_ongoing_requests,
        "serve_options": serve_options,
        "method_schemas": schemas,
        "context_methods": sorted(n for n, marker in definition.methods.items() if marker.get("context")),
        "lifecycle_methods": {kind: definition.hooks.get(kind) for kind in HOOK_KINDS},
        "init_params": params,
        "accepts_any_kwargs": accepts_any,
    }


def introspect_app(entry: type | str) -> dict[str, Any]:
    """The spec (module docstring) of ``entry`` (a class, or ``"module:Class"`` to import) and of
    every ``@bioengine.app`` class its ``__init__`` type hints need, transitively. Raises
    ``CompositionCycleError`` naming the classes of a cycle, ``BioEngineUserError`` for a class in
    the graph that is not decorated."""
    root = load_entry(entry) if isinstance(entry, str) else entry
    if app_definition(root) is None:
        raise _not_decorated(root, None)
    deployments: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    path: list[type] = []

    def visit(cls: type) -> None:
        if cls in path:
            cycle = [*path[path.index(cls) :], cls]
            raise CompositionCycleError(
                "the apps' __init__ type hints form a cycle: "
                + " -> ".join(class_key(c) for c in cycle)
                + "; a deployment cannot (indirectly) need itself"
            )
        key = class_key(cls)
        if key in deployments:
            return
        params, needs, accepts_any = _init_params(cls)
        path.append(cls)
        for needed in needs:
            visit(needed)
        path.pop()
        deployments[key] = _deployment_spec(cls, params, accepts_any)
        order.append(key)

    visit(root)
    names: dict[str, str] = {}
    for key, spec in deployments.items():
        other = names.setdefault(spec["deployment_name"], key)
        if other != key:
            raise BioEngineUserError(
                f"'{other}' and '{key}' would both be deployed as '{spec['deployment_name']}': "
                "give one @bioengine.app(name=...)"
            )
    return {
        "format_version": SPEC_FORMAT,
        "entry": class_key(root),
        "order": order,
        "deployments": deployments,
    }


def validate_application_kwargs(
    spec: Mapping[str, Any], application_kwargs: Mapping[str, Any] | None
) -> dict[str, dict[str, Any]]:
    """``deploy_app(application_kwargs=...)`` checked against a spec: keys are class names or
    ``module:qualname`` (an unknown or ambiguous key is refused), each value the ``__init__``
    keyword arguments of that class (unknown ones refused, required ones enforced; types are not
    checked). Returns the arguments of every deployment, by ``module:qualname``."""
    deployments: Mapping[str, Any] = spec["deployments"]
    by_name: dict[str, list[str]] = {}
    for key, deployment in deployments.items():
        by_name.setdefault(deployment["class_name"], []).append(key)
    result: dict[str, dict[str, Any]] = {key: {} for key in deployments}
    given_by: dict[str, str] = {}
    for given, arguments in (application_kwargs or {}).items():
        if given in deployments:
            key = given
        elif given in by_name and len(by_name[given]) == 1:
            key = by_name[given][0]
        elif given in by_name:
            raise BioEngineUserError(
                f"application_kwargs key '{given}' is ambiguous: it names {', '.join(by_name[given])}; "
                "use the 'module:ClassName' form"
            )
        else:
            known = sorted({*by_name, *deployments})
            raise BioEngineUserError(
                f"application_kwargs key '{given}' is not a class of this app; known: {', '.join(known)}"
            )
        if key in given_by:
            raise BioEngineUserError(
                f"application_kwargs gives '{key}' twice (as '{given_by[key]}' and '{given}')"
            )
        given_by[key] = given
        if not isinstance(arguments, Mapping):
            raise BioEngineUserError(
                f"application_kwargs['{given}'] must be a dict of __init__ arguments, not {type(arguments).__name__}"
            )
        deployment = deployments[key]
        params = {p["name"]: p for p in deployment["init_params"]}
        for name in arguments:
            if name not in params:
                if deployment["accepts_any_kwargs"]:
                    continue
                values = ", ".join(p for p, e in params.items() if e["kind"] == "value") or "none"
                raise BioEngineUserError(
                    f"application_kwargs['{given}']: '{deployment['class_name']}.__init__' has no parameter "
                    f"'{name}' (its parameters: {values})"
                )
            if params[name]["kind"] == "handle":
                raise BioEngineUserError(
                    f"application_kwargs['{given}']: '{name}' is a handle to '{params[name]['target']}', "
                    "which BioEngine passes itself"
                )
        result[key] = dict(arguments)
    for key, deployment in deployments.items():
        missing = [
            p["name"]
            for p in deployment["init_params"]
            if p["kind"] == "value" and p["required"] and p["name"] not in result[key]
        ]
        if missing:
            raise BioEngineUserError(
                f"'{deployment['class_name']}.__init__' needs {', '.join(map(repr, missing))}: give "
                f"application_kwargs={{'{deployment['class_name']}': {{{', '.join(repr(m) + ': ...' for m in missing)}}}}}"
            )
    return result
