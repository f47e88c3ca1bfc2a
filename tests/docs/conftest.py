"""The READMEs are tested: every ```bash and ```python block runs, as written, against one real stack.

Parsing and the skip directives are Sybil's (https://sybil.readthedocs.io); the evaluators are ours:

- ```bash: ``bash -e`` in the repository root, with ``BIOENGINE_WORKSPACE_DIR`` set to the test's
  workspace dir, so ``uv run bioengine ...`` finds the worker the test started (its connection
  file) and ``~/.bioengine`` of the person running the tests is never touched.
- ```python: one namespace per document, evaluated on one asyncio loop per document with top-level
  ``await`` allowed (as in a notebook). ``URL``, ``TOKEN`` (the admin token) and ``HTTP_URL`` (the
  datasets server) come from the running worker. An "Unclosed client session" (or any unclosed
  resource warning) left by a document's blocks fails its last block.
- ```text, ```yaml and blocks without a language are output or data: not run.

Directives, in HTML comments just above a block (visible in the Markdown source):

- ``<!-- skip: next "why" -->`` (Sybil): the block is not run; the reason says why (it needs a
  remote server, it is the test command itself, ...). ``<!-- skip: next if(not SLURM, "why") -->``
  runs it only where SLURM is up (``SLURM`` is true where ``sinfo`` shows a node, or with
  ``BIOENGINE_REQUIRE_SLURM=1``, which CI sets and which makes a missing SLURM an error).
- ``<!-- background: why -->``: the block starts a long-running program (the worker). The harness
  starts it before the document's other blocks, in the background, waits until it is ready, and
  stops it with Ctrl-C (SIGINT) after the last document.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import gc
import itertools
import json
import os
import re
import signal
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sybil import Document, Region, Sybil
from sybil.parsers.markdown import CodeBlockParser, SkipParser
from sybil.parsers.markdown.lexers import DirectiveInHTMLCommentLexer

from bioengine_common.testing import slurm_problem
from bioengine_worker._launcher import CONNECTION_FILE
from bioengine_worker.testing import READY_LINE

ROOT = Path(__file__).resolve().parents[2]
#: The documents whose blocks run, in this order (README.md starts the worker).
DOCUMENTS = [
    "README.md",
    *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("libs/*/README.md")),
    *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("services/*/README.md")),
]
BACKGROUND_DIRECTIVE = "background"
READY_TIMEOUT = 600.0  # the first run installs the embedded server's environment


class BackgroundParser:
    """``<!-- background: why -->``: the next bash block is the long-running worker."""

    def __init__(self) -> None:
        self.lexer = DirectiveInHTMLCommentLexer(BACKGROUND_DIRECTIVE, arguments=".+?")

    def __call__(self, document: Document) -> Iterator[Region]:
        for lexed in self.lexer(document):
            yield Region(lexed.start, lexed.end, lexed.lexemes["arguments"], _mark_background)


def _mark_background(example: Any) -> None:
    example.namespace["__background_next__"] = True


@dataclass
class Stack:
    """The worker started from README.md's background block, and what the blocks need."""

    workspace_dir: Path
    env: dict[str, str]
    command: str = ""
    process: subprocess.Popen[bytes] | None = None
    connection: dict[str, Any] = field(default_factory=dict)
    http_url: str = ""
    timeline: list[tuple[str, float]] = field(default_factory=list)
    started: float = 0.0

    def mark(self, event: str) -> None:
        self.timeline.append((event, time.monotonic() - self.started))

    def output(self) -> str:
        path = self.workspace_dir / "launcher.out"
        return path.read_text(errors="replace") if path.exists() else ""


def make_cells_dataset(workspace_dir: Path) -> None:
    """The dataset the READMEs read: ``cells/image.zarr`` in the worker's default data dir."""
    import numpy as np
    import zarr

    folder = workspace_dir / "datasets" / "cells"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.yaml").write_text("name: Cell images\ndescription: Confocal stacks (test data)\n")
    volume = np.random.default_rng(0).integers(0, 60000, size=(2, 1024, 1024), dtype="uint16")
    array = zarr.create_array(store=folder / "image.zarr", shape=volume.shape, dtype="uint16",
                              chunks=(1, 256, 256))  # fmt: skip
    array[:] = volume


def background_command(document: Document) -> str | None:
    """The source of the block after a ``background`` directive, if the document has one."""
    examples = list(document.examples())
    for example, following in itertools.pairwise(examples):
        if example.region.evaluator is _mark_background:
            return str(following.region.parsed)
    return None


async def _worker_ready(connection: dict[str, Any], timeout: float) -> str:
    """Poll the worker's get_status until is_ready; return the datasets server's HTTP URL."""
    from hypha_rpc import connect_to_server

    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            server = await connect_to_server(
                {"server_url": connection["server_url"], "token": connection["token"],
                 "workspace": connection["workspace"]}
            )  # fmt: skip
            try:
                worker = await server.get_service(connection["service_id"])
                while time.monotonic() < deadline:
                    last = await worker.get_status()
                    if last.get("is_ready"):
                        return str(last["services"]["datasets"]["status"]["http_url"])
                    await asyncio.sleep(0.5)
            finally:
                await server.disconnect()
        except Exception as exc:
            last = exc
            await asyncio.sleep(0.5)
    raise TimeoutError(f"the worker was not ready within {timeout:.0f} s; last status: {last}")


def start_worker(stack: Stack, command: str) -> None:
    stack.command = command
    stack.started = time.monotonic()
    with open(stack.workspace_dir / "launcher.out", "wb") as out:
        # Its own process group: Ctrl-C in a terminal signals the whole foreground group.
        stack.process = subprocess.Popen(
            ["bash", "-c", command], cwd=ROOT, env=stack.env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    deadline = stack.started + READY_TIMEOUT
    connection_file = stack.workspace_dir / CONNECTION_FILE
    while READY_LINE not in stack.output() or not connection_file.exists():
        if stack.process.poll() is not None:
            raise RuntimeError(f"`{command}` exited with code {stack.process.returncode}:\n{stack.output()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"`{command}` printed no banner in {READY_TIMEOUT:.0f} s:\n{stack.output()}")
        time.sleep(0.1)
    stack.mark("banner")
    stack.connection = json.loads(connection_file.read_text())
    stack.http_url = asyncio.run(_worker_ready(stack.connection, deadline - time.monotonic()))
    stack.mark("get_status is_ready")


def stop_worker(stack: Stack) -> int | None:
    """Ctrl-C, as a person would; SIGKILL of the group only if it does not end in 120 s."""
    process = stack.process
    if process is None:
        return None
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    return process.wait()


@pytest.fixture(scope="session")
def docs_stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Stack]:
    workspace_dir = tmp_path_factory.mktemp("docs-worker")
    make_cells_dataset(workspace_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIOENGINE_")}
    env["BIOENGINE_WORKSPACE_DIR"] = str(workspace_dir)
    stack = Stack(workspace_dir, env)
    readme = SYBIL.parse(ROOT / "README.md")
    command = background_command(readme)
    assert command, "README.md has no `<!-- background: ... -->` block that starts the worker"
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    try:
        start_worker(stack, command)
        yield stack
    finally:
        code = stop_worker(stack)
        stack.mark(f"stopped (exit code {code})")
        if reporter is not None:
            reporter.write_line("")
            reporter.write_line(f"docs test: `{stack.command}` timeline (seconds since the command):")
            for event, seconds in stack.timeline:
                reporter.write_line(f"  {seconds:7.1f}  {event}")


# ---- evaluators ---------------------------------------------------------------------------------


def _slurm_available() -> bool:
    problem = slurm_problem()
    if problem and os.environ.get("BIOENGINE_REQUIRE_SLURM") == "1":
        raise RuntimeError(f"BIOENGINE_REQUIRE_SLURM=1 but SLURM is not usable: {problem}")
    return problem is None


def evaluate_bash(example: Any) -> str | None:
    namespace = example.namespace
    stack: Stack = namespace["__stack__"]
    source = str(example.parsed)
    if namespace.pop("__background_next__", False):
        # Started before the document's blocks (see docs_stack); check it is that one and alive.
        if source != stack.command:
            return f"a second background block: {source!r} (only the worker's is supported)"
        if stack.process is None or stack.process.poll() is not None:
            return f"`{source.strip()}` is not running:\n{stack.output()}"
        return None
    result = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", source], cwd=ROOT, env=stack.env,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    stack.mark(f"{Path(example.path).relative_to(ROOT)}:{example.line} bash block done")
    if result.returncode != 0:
        return f"exit code {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    return None


_UNCLOSED = re.compile(r"Unclosed|unclosed")


def evaluate_python(example: Any) -> str | None:
    namespace = example.namespace
    loop: asyncio.AbstractEventLoop = namespace["__loop__"]
    # Line numbers in tracebacks are the README's.
    source = "\n" * example.line + str(example.parsed)
    code = compile(source, example.path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)
    if asyncio.iscoroutine(result):
        loop.run_until_complete(result)
    stack: Stack = namespace["__stack__"]
    stack.mark(f"{Path(example.path).relative_to(ROOT)}:{example.line} python block done")
    return None


def unclosed_resources(namespace: dict[str, Any]) -> list[str]:
    """Drop the document's objects and collect: anything left unclosed reports itself now."""
    problems: list[str] = namespace["__problems__"]
    for name in [n for n in namespace if not n.startswith("__")]:
        del namespace[name]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    problems += [str(w.message) for w in caught if _UNCLOSED.search(str(w.message))]
    return problems


SYBIL = Sybil(
    parsers=[
        SkipParser(),
        BackgroundParser(),
        CodeBlockParser(language="bash", evaluator=evaluate_bash),
        CodeBlockParser(language="python", evaluator=evaluate_python),
    ],
    patterns=["*.md"],
    path=str(ROOT),
)


def document_namespace(namespace: dict[str, Any], stack: Stack) -> None:
    """What a document's blocks start with: the stack's URL, TOKEN, HTTP_URL, a loop, SLURM."""
    loop = asyncio.new_event_loop()
    problems: list[str] = []

    def on_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if _UNCLOSED.search(message):
            problems.append(message)
        loop.default_exception_handler(context)

    loop.set_exception_handler(on_loop_error)
    namespace.update(
        __stack__=stack,
        __loop__=loop,
        __problems__=problems,
        URL=stack.connection["server_url"],
        TOKEN=stack.connection["token"],
        HTTP_URL=stack.http_url,
        SLURM=_slurm_available(),
    )


def close_document(namespace: dict[str, Any]) -> list[str]:
    """End of a document, as at the end of a notebook: its hypha-rpc connections are
    disconnected; then anything else left unclosed is reported ("Unclosed client session")."""
    loop: asyncio.AbstractEventLoop = namespace["__loop__"]
    for value in list(namespace.values()):
        if hasattr(value, "get_service") and hasattr(value, "disconnect"):
            with contextlib.suppress(Exception):
                loop.run_until_complete(value.disconnect())
    problems = unclosed_resources(namespace)
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
    return problems


# ---- one test per block, in document order ------------------------------------------------------


@dataclass
class Block:
    document: str
    example: Any
    last: bool  # the document's last block: its end-of-document checks run after it

    def __str__(self) -> str:
        return f"{self.document}:{self.example.line}"


def _blocks() -> list[Block]:
    blocks = []
    for name in DOCUMENTS:
        examples = list(SYBIL.parse(ROOT / name).examples())
        blocks += [Block(name, example, i == len(examples) - 1) for i, example in enumerate(examples)]
    return blocks


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "block" in metafunc.fixturenames:
        blocks = _blocks()
        params = [pytest.param(b, id=str(b)) for b in blocks]
        metafunc.parametrize("block", params)


@pytest.fixture
def run_block(docs_stack: Stack) -> Any:
    def run(block: Block) -> None:
        namespace = block.example.namespace
        if "__loop__" not in namespace:
            document_namespace(namespace, docs_stack)
        try:
            block.example.evaluate()
        finally:
            if block.last:
                problems = close_document(namespace)
                assert not problems, f"{block.document} left resources unclosed: {problems}"

    return run
