"""Static checks of a 0.6.0 app's Python sources, read with :mod:`ast` and never imported.

- every ``.py`` that reaches the replicas parses (file and line of a syntax error);
- the entry module is a file at the artifact root (``pkg.sub.mod`` -> ``pkg/sub/mod.py`` or
  ``pkg/sub/mod/__init__.py``) and defines the entry class, or imports it from a file of the app;
- the entry class is decorated with ``@bioengine.app`` (``import bioengine``, ``import bioengine
  as be``, ``from bioengine import app`` and aliases are understood);
- in every ``@bioengine.app`` class of the app: no plain method takes a name the SDK installs
  (``check_health``, ``test_deployment``, ``bioengine_runtime_version``, and ``async_init``
  unless it is the ``@bioengine.async_init`` hook itself); at most one hook of each lifecycle
  marker; ``num_gpus`` (older SDKs) and ``gpu_memory_mb`` (newer) not both in one decorator.

What only an import can tell (a decorator applied by a function call, a class made at run
time) is left to the runtime, which checks again inside Ray.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass, field

from bioengine.decorators import HOOK_KINDS, RESERVED_METHOD_NAMES

from ._problems import Problem
from ._replica import reaches_replicas

__all__ = ["HOOK_MARKERS", "RESERVED_METHODS", "check_sources_06", "syntax_problems"]

#: The SDK's lifecycle hooks and the method names it reserves: declared once, by the SDK.
HOOK_MARKERS = HOOK_KINDS
RESERVED_METHODS = RESERVED_METHOD_NAMES


@dataclass
class _Module:
    file: str
    tree: ast.Module
    #: local name -> what it stands for ("bioengine", "bioengine.app", "pkg.mod.Class", ...)
    aliases: dict[str, str] = field(default_factory=dict)


def _module_files(module: str) -> tuple[str, str]:
    path = module.replace(".", "/")
    return f"{path}.py", f"{path}/__init__.py"


def _file_module(file: str) -> str:
    stem = file.removesuffix(".py").removesuffix("/__init__")
    return stem.replace("/", ".")


def _aliases(file: str, tree: ast.Module) -> dict[str, str]:
    names: dict[str, str] = {}
    package = (
        _file_module(file).rpartition(".")[0] if not file.endswith("__init__.py") else _file_module(file)
    )
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join([*parts, *([base] if base else [])])
            for alias in node.names:
                names[alias.asname or alias.name] = f"{base}.{alias.name}" if base else alias.name
    return names


def _qualified(node: ast.expr, aliases: Mapping[str, str]) -> str:
    """The dotted name a decorator refers to, through the module's imports (calls unwrapped)."""
    if isinstance(node, ast.Call):
        node = node.func
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def _app_decorator(cls: ast.ClassDef, aliases: Mapping[str, str]) -> ast.expr | None:
    return next((d for d in cls.decorator_list if _qualified(d, aliases) == "bioengine.app"), None)


def _check_app_class(module: _Module, cls: ast.ClassDef, decorator: ast.expr) -> list[Problem]:
    problems: list[Problem] = []
    if isinstance(decorator, ast.Call):
        given = {k.arg for k in decorator.keywords if k.arg}
        if {"num_gpus", "gpu_memory_mb"} <= given:
            problems.append(
                Problem(
                    module.file,
                    decorator.lineno,
                    f"{cls.name}: @bioengine.app takes gpu_memory_mb (newer SDKs) or num_gpus "
                    "(older SDKs), not both",
                )
            )
    hooks: dict[str, list[ast.FunctionDef | ast.AsyncFunctionDef]] = {m: [] for m in HOOK_MARKERS}
    for item in cls.body:
        if not isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        markers = [
            name.rpartition(".")[2]
            for name in (_qualified(d, module.aliases) for d in item.decorator_list)
            if name in {f"bioengine.{m}" for m in HOOK_MARKERS}
        ]
        for marker in markers:
            hooks[marker].append(item)
        if item.name in RESERVED_METHODS and not (item.name == "async_init" and "async_init" in markers):
            problems.append(
                Problem(
                    module.file,
                    item.lineno,
                    f"{cls.name}.{item.name}: '{item.name}' is a name the bioengine SDK reserves; "
                    "rename the method (mark lifecycle hooks with @bioengine.async_init, "
                    "@bioengine.smoke_test or @bioengine.health_check)",
                )
            )
    for marker, methods in hooks.items():
        if len(methods) > 1:
            first = methods[0]
            problems += [
                Problem(
                    module.file,
                    extra.lineno,
                    f"{cls.name}.{extra.name}: a second @bioengine.{marker} hook "
                    f"('{first.name}' at line {first.lineno} is one already); a class has at most one",
                )
                for extra in methods[1:]
            ]
    return sorted(problems, key=lambda p: p.line or 0)


def _parse(files: Mapping[str, bytes]) -> tuple[dict[str, _Module], list[Problem]]:
    modules: dict[str, _Module] = {}
    problems: list[Problem] = []
    for name in sorted(files):
        if not name.endswith(".py") or not reaches_replicas(name):
            continue
        try:
            tree = ast.parse(files[name].decode("utf-8"), filename=name)
        except SyntaxError as exc:
            problems.append(Problem(name, exc.lineno, f"syntax error: {exc.msg}"))
            continue
        except UnicodeDecodeError:
            problems.append(Problem(name, None, "not UTF-8 text"))
            continue
        except ValueError as exc:  # e.g. null bytes
            problems.append(Problem(name, None, f"not Python source: {exc}"))
            continue
        modules[name] = _Module(name, tree, _aliases(name, tree))
    return modules, problems


def syntax_problems(files: Mapping[str, bytes]) -> list[Problem]:
    """The ``.py`` files that reach the replicas and do not parse (what is checked without an entry)."""
    return _parse(files)[1]


def _find_class(
    modules: Mapping[str, _Module], module: str, class_name: str, seen: set[str]
) -> tuple[_Module | None, ast.ClassDef | None, str | None]:
    """(module, class node, problem) of ``module:class_name``, through re-exports in the app."""
    file = next((f for f in _module_files(module) if f in modules), None)
    if file is None or file in seen:
        return None, None, None
    seen.add(file)
    found = modules[file]
    for statement in found.tree.body:
        if isinstance(statement, ast.ClassDef) and statement.name == class_name:
            return found, statement, None
    origin = found.aliases.get(class_name)
    if origin and "." in origin:
        source_module, _, source_name = origin.rpartition(".")
        owner, node, problem = _find_class(modules, source_module, source_name, seen)
        if node is not None or problem is not None:
            return owner, node, problem
        if not any(f in modules for f in _module_files(source_module)):
            return (
                found,
                None,
                f"imports '{class_name}' from '{source_module}', which is not a file of the app",
            )
    return found, None, f"defines no class '{class_name}'"


def check_sources_06(
    files: Mapping[str, bytes],
    entry: str,
    manifest_file: str = "manifest.yaml",
    entry_line: int | None = None,
) -> list[Problem]:
    """Every problem of a 0.6.0 app's sources for ``entry`` (``module:Class``), with file and line."""
    modules, problems = _parse(files)
    module, _, class_name = entry.partition(":")
    candidates = _module_files(module)
    present = next((f for f in candidates if f in files), None)
    if present is None:
        problems.append(
            Problem(
                manifest_file,
                entry_line,
                f"entry {entry!r}: the app has no file '{candidates[0]}' (the entry module, a path "
                "from the artifact root)",
            )
        )
    elif present in modules:
        owner, node, problem = _find_class(modules, module, class_name, set())
        if node is None or owner is None:
            problems.append(Problem(present, None, f"{problem} (the entry {entry!r} of {manifest_file})"))
        elif _app_decorator(node, owner.aliases) is None:
            problems.append(
                Problem(
                    owner.file,
                    node.lineno,
                    f"class '{class_name}' (the entry of {manifest_file}) is not decorated with "
                    "@bioengine.app",
                )
            )
    elif not reaches_replicas(present):
        problems.append(
            Problem(manifest_file, entry_line, f"entry {entry!r}: '{present}' never reaches the replicas")
        )
    for parsed in modules.values():
        for item in ast.walk(parsed.tree):
            if isinstance(item, ast.ClassDef):
                decorator = _app_decorator(item, parsed.aliases)
                if decorator is not None:
                    problems += _check_app_class(parsed, item, decorator)
    return problems
