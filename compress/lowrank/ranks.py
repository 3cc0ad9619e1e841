"""Ranks: the largest one worth factorizing at, and per-matrix ranks from a budget.

Two factors of rank r hold r * (m + n) weights (and cost as many multiply-adds per token) against
m * n for the dense [m, n] matrix, so a rank is useful only while r < m * n / (m + n): `max_rank`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # tensor methods only: the factorize config reads max_rank at plan time, without torch
    import torch


def break_even(m: int, n: int) -> float:
    """The rank at which two factors hold as many weights as the dense [m, n] matrix."""
    return m * n / (m + n)


def max_rank(m: int, n: int) -> int:
    """The largest rank r with r * (m + n) < m * n."""
    return (m * n - 1) // (m + n)


def energy_rank(s: torch.Tensor, energy: float, cap: int, multiple: int = 1) -> int:
    """The smallest rank keeping `energy` of sum s^2, rounded up to a multiple of `multiple`, at most cap
    (itself rounded down to a multiple)."""
    cum = (s.double() ** 2).cumsum(0) / (s.double() ** 2).sum().clamp_min(1e-30)
    r = int((cum < energy - 1e-12).sum()) + 1
    r = -(-r // multiple) * multiple
    return max(multiple, min(r, cap // multiple * multiple))


def budget_ranks(spectra: dict[str, tuple[torch.Tensor, int, int]], fraction: float,
                 multiple: int = 1) -> dict[str, int]:
    """Ranks (multiples of `multiple`, each >= multiple, < break-even) whose factors hold at most
    `fraction` of the dense weights of all the matrices together, chosen greedily: the next `multiple`
    rank units go where they keep the most normalized energy (s_i^2 / sum s^2 of its matrix) per weight
    they cost (multiple * (m + n)).

    spectra: name -> (singular values, descending; m, n)."""
    budget = fraction * sum(m * n for _, m, n in spectra.values())
    ranks = {name: multiple for name in spectra}
    spent = sum(multiple * (m + n) for _, m, n in spectra.values())
    gains = []
    for name, (s, m, n) in spectra.items():
        e = (s.double() ** 2) / (s.double() ** 2).sum().clamp_min(1e-30)
        top = max_rank(m, n) // multiple * multiple
        for i in range(multiple, top - multiple + 1, multiple):  # rank i + multiple adds values i..i+multiple-1
            gains.append((float(e[i:i + multiple].sum()) / (multiple * (m + n)), name, multiple * (m + n)))
    gains.sort(key=lambda g: -g[0])
    for _, name, cost in gains:  # within a matrix, gains fall with i: the greedy order keeps prefixes
        if spent + cost <= budget:
            ranks[name] += multiple
            spent += cost
    return ranks
