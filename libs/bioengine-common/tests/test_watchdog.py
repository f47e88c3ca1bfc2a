"""The event loop's watchdog, in a process of its own (it ends the process it runs in)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import asyncio, logging, re, sys, threading, time
    from bioengine_common._watchdog import watch_event_loop

    def blocked_while_holding_the_loop():
        time.sleep({block})

    def holding_the_gil():
        # Catastrophic backtracking: the regex engine keeps the GIL for minutes, as a native
        # library deadlocked in C would keep it for ever.
        re.match(r"(a+)+$", "a" * 40 + "b")

    async def main():
        watchdog = asyncio.create_task(watch_event_loop({stall}, logging.getLogger("t")))
        await asyncio.sleep({idle})
        if {gil}:
            threading.Thread(target=holding_the_gil, daemon=True).start()
            await asyncio.sleep(60)
        blocked_while_holding_the_loop()
        watchdog.cancel()
        print("finished", flush=True)

    asyncio.run(main())
    """
)


def _run(stall: float, idle: float, block: float, gil: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT.format(stall=stall, idle=idle, block=block, gil=gil)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_blocked_loop_ends_the_process_with_every_threads_stack():
    done = _run(stall=2, idle=0.5, block=60)
    assert done.returncode == 1, done
    assert "finished" not in done.stdout
    # faulthandler's report: which function held the loop.
    assert "Timeout" in done.stderr
    assert "blocked_while_holding_the_loop" in done.stderr, done.stderr


def test_a_thread_that_keeps_the_gil_ends_the_process_too():
    done = _run(stall=2, idle=0.5, block=0, gil=True)
    assert done.returncode == 1, done
    assert "finished" not in done.stdout
    assert "holding_the_gil" in done.stderr, done.stderr


def test_a_loop_that_keeps_turning_is_left_alone():
    # Idle (awaiting) for twice the stall, then a block shorter than it: no exit.
    done = _run(stall=2, idle=4, block=0.5)
    assert done.returncode == 0, done.stderr
    assert "finished" in done.stdout
    assert "Timeout" not in done.stderr


def test_zero_turns_it_off():
    done = _run(stall=0, idle=0.1, block=3)
    assert done.returncode == 0, done.stderr
    assert "finished" in done.stdout
