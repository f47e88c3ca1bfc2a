"""Resource arithmetic shared by the fit check (``_fit.py``) and the SLURM scaling policy.

Resources use Ray's names: ``CPU``, ``GPU``, ``memory`` (bytes) and custom resources. One
wording for amounts and shortfalls, e.g. ``largest node has 2 CPUs, 4 CPUs needed``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["EPSILON", "GIB", "describe", "describe_amount", "fits", "shortfall"]

#: Slack for float sums (0.1 + 0.2 CPUs).
EPSILON = 1e-6
GIB = 1024**3

_NAMES = {"CPU": "CPUs", "GPU": "GPUs"}


def fits(needed: Mapping[str, float], offered: Mapping[str, float]) -> bool:
    """Whether ``offered`` holds every amount of ``needed`` (amounts of about 0 always fit)."""
    return all(
        amount <= EPSILON or offered.get(name, 0.0) + EPSILON >= amount for name, amount in needed.items()
    )


def describe_amount(resource: str, amount: float) -> str:
    """``1.5 CPUs``, ``4 GiB of memory``, ``2 tpu``."""
    if resource == "memory":
        return f"{amount / GIB:.3g} GiB of memory"
    return f"{amount:.3g} {_NAMES.get(resource, resource)}"


def describe(resources: Mapping[str, float]) -> str:
    """``2 CPUs, 4 GiB of memory``."""
    return ", ".join(describe_amount(name, amount) for name, amount in resources.items())


def shortfall(needed: Mapping[str, float], candidates: Sequence[Mapping[str, float]], what: str) -> str:
    """Name the first resource none of ``candidates`` has enough of.

    e.g. ``largest free node has 1.5 CPUs, 4 CPUs needed`` (``what`` = "largest free node").
    """
    for name, amount in needed.items():
        best = max((offered.get(name, 0.0) for offered in candidates), default=0.0)
        if amount > EPSILON and best + EPSILON < amount:
            return f"{what} has {describe_amount(name, best)}, {describe_amount(name, amount)} needed"
    wanted = " and ".join(describe_amount(name, amount) for name, amount in needed.items())
    return f"no single node offers {wanted} at once"
