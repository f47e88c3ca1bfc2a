"""Static checks of an app's deployment files, without running them.

User code never runs in a service process, so apps-svc reads the files with :mod:`ast`:
syntax errors (with line numbers), missing classes, classes that are not Serve deployments,
an entry without schema methods, sub-deployments the entry cannot receive, init kwargs that
do not match, and the resources written in the decorators. What the source cannot tell (a
computed option) falls back to defaults; the real build in Ray checks again.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AppAnalysis", "analyze_app"]


@dataclass
class ClassInfo:
    module: str
    name: str
    node: ast.ClassDef
    decorator: ast.expr | None = None
    ray_actor_options: dict[str, Any] = field(default_factory=dict)
    num_replicas: int = 1
    init_params: list[str] = field(default_factory=list)
    init_required: list[str] = field(default_factory=list)
    init_var_kwargs: bool = False
    schema_methods: list[str] = field(default_factory=list)
    #: Has base classes: ``__init__`` and schema methods may come from them, unseen here.
    inherits: bool = False


@dataclass
class AppAnalysis:
    entry_class: str
    methods: list[str]
    resources: dict[str, float]
    problems: list[str]
    classes: dict[str, ClassInfo] = field(default_factory=dict)


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return _dotted(node.func)
    return ""


def _is_deployment_decorator(node: ast.expr) -> bool:
    return _dotted(node).split(".")[-1] == "deployment"


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def _class_info(module: str, node: ast.ClassDef) -> ClassInfo:
    info = ClassInfo(module=module, name=node.name, node=node)
    info.inherits = any(not (isinstance(b, ast.Name) and b.id == "object") for b in node.bases)
    # Without its own __init__, an inherited one takes what it takes: accept any kwargs.
    info.init_var_kwargs = info.inherits
    for decorator in node.decorator_list:
        if _is_deployment_decorator(decorator):
            info.decorator = decorator
            if isinstance(decorator, ast.Call):
                for keyword in decorator.keywords:
                    value = _literal(keyword.value)
                    if keyword.arg == "ray_actor_options" and isinstance(value, dict):
                        info.ray_actor_options = value
                    elif keyword.arg == "num_replicas" and isinstance(value, int) and value > 0:
                        info.num_replicas = value
    for item in node.body:
        if not isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if item.name == "__init__":
            arguments = item.args
            positional = [a.arg for a in arguments.posonlyargs + arguments.args][1:]  # drop self
            defaults = len(arguments.defaults)
            required = positional[: len(positional) - defaults] if defaults else positional
            kwonly = [a.arg for a in arguments.kwonlyargs]
            kw_required = [
                a.arg for a, d in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True) if d is None
            ]
            info.init_params = positional + kwonly
            info.init_required = required + kw_required
            info.init_var_kwargs = arguments.kwarg is not None
        elif not item.name.startswith("_") and any(
            _dotted(d).split(".")[-1] == "schema_method" for d in item.decorator_list
        ):
            info.schema_methods.append(item.name)
    return info


def analyze_app(
    files: Mapping[str, bytes],
    deployments: list[str],
    init_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    default_num_cpus: float = 0.1,
    disable_gpu: bool = False,
) -> AppAnalysis:
    """Check the deployments of an app; ``problems`` lists everything found, each naming its place."""
    init_kwargs = init_kwargs or {}
    problems: list[str] = []
    classes: dict[str, ClassInfo] = {}
    parsed: dict[str, ast.Module] = {}
    for entry in deployments:
        module, _, class_name = entry.partition(":")
        file_name = f"{module}.py"
        if module not in parsed:
            if file_name not in files:
                problems.append(f"{entry}: the app has no file '{file_name}'")
                continue
            try:
                parsed[module] = ast.parse(files[file_name].decode("utf-8"), filename=file_name)
            except SyntaxError as exc:
                problems.append(f"{file_name} line {exc.lineno}: syntax error: {exc.msg}")
                continue
            except UnicodeDecodeError:
                problems.append(f"{file_name}: not UTF-8 text")
                continue
        if module not in parsed:
            continue
        node = next(
            (n for n in parsed[module].body if isinstance(n, ast.ClassDef) and n.name == class_name), None
        )
        if node is None:
            problems.append(f"{entry}: '{file_name}' defines no class '{class_name}'")
            continue
        info = _class_info(module, node)
        if info.decorator is None:
            problems.append(f"{entry}: class '{class_name}' is not decorated with @serve.deployment")
        classes[class_name] = info

    entry_class = deployments[0].partition(":")[2] if deployments else ""
    entry_info = classes.get(entry_class)
    if entry_info is not None:
        if not entry_info.schema_methods and not entry_info.inherits:
            problems.append(f"{entry_class}: the entry deployment has no @schema_method methods to expose")
        for other in deployments[1:]:
            stem = other.partition(":")[0]
            if stem not in entry_info.init_params and not entry_info.init_var_kwargs:
                problems.append(
                    f"{entry_class}.__init__: needs a parameter named '{stem}' to receive the "
                    f"'{other}' deployment handle"
                )
    sub_stems = {other.partition(":")[0] for other in deployments[1:]}
    for class_name, kwargs in init_kwargs.items():
        if class_name not in classes:
            if class_name not in {d.partition(":")[2] for d in deployments}:
                problems.append(f"application_kwargs.{class_name}: the app has no deployment '{class_name}'")
            continue
        if not isinstance(kwargs, Mapping):
            problems.append(f"application_kwargs.{class_name}: must be a mapping of argument names to values")
            continue
        info = classes[class_name]
        for name in kwargs:
            if name not in info.init_params and not info.init_var_kwargs:
                problems.append(
                    f"application_kwargs.{class_name}.{name}: {class_name}.__init__ takes no '{name}'"
                )
    entry_kwargs = init_kwargs.get(entry_class)
    if isinstance(entry_kwargs, Mapping):
        for stem in sorted(sub_stems & set(entry_kwargs)):
            problems.append(
                f"application_kwargs.{entry_class}.{stem}: '{stem}' receives the handle of the "
                f"'{stem}' deployment and cannot be given as a kwarg"
            )
    for class_name, info in classes.items():
        class_kwargs = init_kwargs.get(class_name)
        given = set(class_kwargs) if isinstance(class_kwargs, Mapping) else set()
        if class_name == entry_class:
            given |= sub_stems
        missing = [p for p in info.init_required if p not in given]
        if missing:
            problems.append(
                f"application_kwargs.{class_name}: missing required argument(s) {', '.join(missing)}"
            )

    resources = {"num_cpus": 0.0, "num_gpus": 0.0, "memory": 0.0}
    for info in classes.values():
        options = info.ray_actor_options
        cpus = options.get("num_cpus", default_num_cpus)
        gpus = 0 if disable_gpu else options.get("num_gpus", 0)
        memory = options.get("memory", 0)
        custom: dict[Any, Any] = options.get("resources") or {}
        if not isinstance(custom, dict):
            custom = {}
        for key, value in (("num_cpus", cpus), ("num_gpus", gpus), ("memory", memory), *custom.items()):
            if isinstance(key, str) and isinstance(value, int | float) and value >= 0:
                resources[key] = resources.get(key, 0.0) + float(value) * info.num_replicas
    return AppAnalysis(
        entry_class=entry_class,
        methods=list(entry_info.schema_methods) if entry_info else [],
        resources=resources,
        problems=problems,
        classes=classes,
    )
