"""ray.shutdown() never beside a Ray call of another thread: a call still waiting in Ray's core
worker when the shutdown frees it crashed apps-svc (SIGSEGV in CI, a Serve status query on a
killed head). The real path: apps-svc's test_resilience.py (head killed while it is in use)."""

from __future__ import annotations

import threading
import time

import pytest

import bioengine_common._ray as ray_module
from bioengine_common import RayCalls


@pytest.fixture
def events(monkeypatch) -> list[str]:
    """What happened, in order; ``ray.shutdown()`` recorded instead of run."""
    happened: list[str] = []
    monkeypatch.setattr(ray_module, "disconnect_driver", lambda: happened.append("shutdown"))
    return happened


def _started(calls: RayCalls, function) -> threading.Thread:
    thread = threading.Thread(target=calls.call, args=(function,))
    thread.start()
    while calls.under_way == 0:
        time.sleep(0.01)
    return thread


def test_the_shutdown_waits_for_a_call_under_way(events):
    calls = RayCalls()
    release = threading.Event()
    caller = _started(calls, lambda: (release.wait(10), events.append("call ended")))
    idle: list[bool] = []
    shutting = threading.Thread(target=lambda: idle.append(calls.shutdown_when_idle(10)))
    shutting.start()
    time.sleep(0.3)
    assert events == []  # not while the call is inside Ray
    release.set()
    caller.join(5)
    shutting.join(5)
    assert events == ["call ended", "shutdown"] and idle == [True]
    assert calls.under_way == 0


def test_a_call_that_starts_during_the_shutdown_runs_after_it(events, monkeypatch):
    calls = RayCalls()
    in_shutdown = threading.Event()

    def slow_shutdown() -> None:
        in_shutdown.set()
        time.sleep(0.3)
        events.append("shutdown")

    monkeypatch.setattr(ray_module, "disconnect_driver", slow_shutdown)
    shutting = threading.Thread(target=calls.shutdown_when_idle, args=(10,))
    shutting.start()
    in_shutdown.wait(5)
    caller = threading.Thread(target=calls.call, args=(lambda: events.append("call"),))
    caller.start()
    shutting.join(5)
    caller.join(5)
    assert events == ["shutdown", "call"]


def test_a_call_still_under_way_after_the_wait_leaves_the_driver_alone_unless_forced(events):
    calls = RayCalls()
    release = threading.Event()
    caller = _started(calls, lambda: release.wait(10))
    assert calls.shutdown_when_idle(0.2) is False
    assert events == []
    assert calls.shutdown_when_idle(0.2, force=True) is False
    assert events == ["shutdown"]
    release.set()
    caller.join(5)
    assert calls.shutdown_when_idle(1) is True and events == ["shutdown", "shutdown"]


def test_a_failing_call_is_counted_out_and_its_error_kept():
    calls = RayCalls()

    def broken() -> None:
        raise RuntimeError("the head is gone")

    with pytest.raises(RuntimeError, match="the head is gone"):
        calls.call(broken)
    assert calls.under_way == 0
    assert calls.call(lambda: 42) == 42
