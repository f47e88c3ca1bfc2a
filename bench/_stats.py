"""Shared by the benchmarks: percentiles, the latency table, a process's CPU time."""

from __future__ import annotations

import statistics

import psutil


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
