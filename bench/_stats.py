"""Shared by the benchmarks: percentiles, the latency table, a process's CPU time, a balanced
order of interleaved blocks."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TypeVar

import psutil

T = TypeVar("T")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def print_latency_table(samples: dict[str, list[float]], label: str) -> None:
    """One row per series of millisecond samples: count, p50, p99, mean."""
    width = max(len(label), *map(len, samples)) + 2
    print(f"{label:<{width}}{'calls':>7}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
    for name, values in samples.items():
        print(
            f"{name:<{width}}{len(values):>7}{statistics.median(values):>10.3f}"
            f"{percentile(values, 99):>10.3f}{statistics.fmean(values):>10.3f}"
        )


def cpu_seconds(process: psutil.Process) -> float:
    """CPU seconds ``process`` has used so far, user and system, all its threads."""
    times = process.cpu_times()
    return times.user + times.system


def balanced_orders(items: Sequence[T]) -> list[list[T]]:
    """Orders of ``items``, one per round of interleaved blocks, in which each item comes right
    after each other one equally often (a Williams design: exactly once over the rounds for an
    even number of items, twice for an odd one).

    A block's first calls are slower when its processes sat idle through the blocks before it,
    and faster after a block that woke the same processes: in one fixed order every round, a
    path always follows the same path, and that favours or costs it in every round."""
    n = len(items)
    first = [0]
    for step in range(1, n):  # 0, 1, n-1, 2, n-2, ...
        first.append((step + 1) // 2 if step % 2 else n - step // 2)
    rows = [[(index + shift) % n for index in first] for shift in range(n)]
    if n % 2:  # an odd number needs the mirrored rows as well
        rows += [row[::-1] for row in rows]
    return [[items[index] for index in row] for row in rows]
