"""Prometheus metrics of a service process, with ``prometheus-client``.

One registry per process (:data:`REGISTRY`): the RPC metrics every service has (calls, errors
and latency per method and caller kind, recorded by :func:`metered` in the one wrapper of
``BioEngineService.rpc_methods``), the counters a service declares at import with
``registry=REGISTRY``, and the gauges it reports at scrape time through
``BioEngineService.collect_metrics``. :func:`serve_metrics` exposes them over HTTP.

Label values never name a person or an app: the caller is a kind (``admin``, ``user``,
``anonymous``, ``service``), errors are exception class names, states are fixed words.
"""

from __future__ import annotations

import functools
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    make_wsgi_app,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer

from ._permissions import is_anonymous, is_authorized

__all__ = [
    "CALLER_KINDS",
    "REGISTRY",
    "RPC_CALLS",
    "RPC_ERRORS",
    "RPC_LATENCY",
    "ScrapeCollector",
    "caller_kind",
    "counter",
    "gauge",
    "metered",
    "serve_metrics",
]

# No ``*_created`` series next to every counter: a scrape carries what Prometheus uses.
disable_created_metrics()

#: Every metric of this process; what :func:`serve_metrics` exposes.
REGISTRY = CollectorRegistry()

#: Who made a call: an admin, another user, an anonymous user, or one of the worker's services
#: on its own behalf (the gateway's status refresh, apps-svc asking bioengine-cluster).
CALLER_KINDS = ("admin", "user", "anonymous", "service")

RPC_CALLS = Counter(
    "bioengine_rpc_calls",
    "RPC method calls answered by this service, by method and caller kind.",
    ["service", "method", "caller"],
    registry=REGISTRY,
)
RPC_ERRORS = Counter(
    "bioengine_rpc_errors",
    "RPC method calls that raised, by method, caller kind and exception class.",
    ["service", "method", "caller", "error"],
    registry=REGISTRY,
)
RPC_LATENCY = Histogram(
    "bioengine_rpc_duration_seconds",
    "Time spent answering an RPC method call, by method and caller kind.",
    ["service", "method", "caller"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)


def _user(context: Any) -> Mapping[str, Any]:
    user = context.get("user") if isinstance(context, Mapping) else None
    return user if isinstance(user, Mapping) else {}


def caller_kind(context: Any, caller: Any, admin_users: Iterable[str], trusted_users: Collection[str]) -> str:
    """The kind of caller for the metrics' ``caller`` label (one of :data:`CALLER_KINDS`).

    A forwarded ``caller`` counts only when the direct caller is trusted to pass one on (else
    the direct caller is classified: the call is refused anyway). A trusted direct caller
    without ``caller`` is ``service``.
    """
    direct = _user(context)
    trusted = str(direct.get("id") or "") in trusted_users and not is_anonymous(direct)
    if trusted and caller is None:
        return "service"
    user = caller if trusted and isinstance(caller, Mapping) else direct
    if not user or is_anonymous(user):
        return "anonymous"
    return "admin" if is_authorized(user, admin_users) else "user"


def metered(
    function: Callable[..., Any], service: str, method: str, kind_of: Callable[[Any, Any], str]
) -> Callable[..., Any]:
    """Wrap an async RPC method: count the call (and its error), observe its latency.

    ``kind_of(context, caller)`` gives the caller kind; it is asked once per call.
    """
    calls: dict[str, tuple[Any, Any]] = {}  # caller kind -> (counter child, histogram child)

    @functools.wraps(function)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        kind = kind_of(kwargs.get("context"), kwargs.get("caller"))
        children = calls.get(kind)
        if children is None:
            children = calls[kind] = (
                RPC_CALLS.labels(service, method, kind),
                RPC_LATENCY.labels(service, method, kind),
            )
        started = time.perf_counter()
        try:
            return await function(*args, **kwargs)
        except Exception as exc:
            RPC_ERRORS.labels(service, method, kind, type(exc).__name__).inc()
            raise
        finally:
            children[0].inc()
            children[1].observe(time.perf_counter() - started)

    return wrapper


def counter(name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
    """A counter in this process's :data:`REGISTRY` (declare it once, at import); its samples are
    ``<name>_total``."""
    return Counter(name, documentation, list(labels), registry=REGISTRY)


def gauge(name: str, documentation: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
    """A gauge family for :meth:`BioEngineService.collect_metrics`; add samples with
    ``family.add_metric([label values], value)``."""
    return GaugeMetricFamily(name, documentation, labels=list(labels))


class ScrapeCollector:
    """Calls ``collect`` (a service's ``collect_metrics``) at every scrape."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]):
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        yield from self._collect()

    def describe(self) -> list[Metric]:
        return []  # not known before a scrape: no name clash check at registration


def serve_metrics(host: str, port: int, sock: socket.socket | None = None) -> tuple[Any, int]:
    """Serve :data:`REGISTRY` at ``http://host:port/metrics`` (any path answers) from a thread;
    return the server (``shutdown()`` to stop it) and the port (the chosen one for 0).

    With ``sock``, a socket already bound and listening (inherited from bioengine-worker, which
    holds the port for the worker's whole life), serve on it and ignore ``host`` and ``port``:
    the port cannot be taken by another process between a restart and the next bind."""
    if sock is None:
        server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
        return server, int(server.server_port)
    inherited = _ListeningSocketServer(sock)
    inherited.set_app(make_wsgi_app(REGISTRY))
    threading.Thread(target=inherited.serve_forever, name="metrics", daemon=True).start()
    return inherited, int(inherited.server_port)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


class _ListeningSocketServer(ThreadingWSGIServer):
    """prometheus-client's threaded WSGI server on a socket that is already listening."""

    def __init__(self, sock: socket.socket):
        self.address_family = sock.family
        super().__init__(sock.getsockname(), _QuietHandler, bind_and_activate=False)
        self.socket.close()  # the unbound one the base made
        self.socket = sock
        self.server_address = sock.getsockname()
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])
        self.setup_environ()
