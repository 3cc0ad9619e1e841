"""Ranks: the largest one worth factorizing at, and per-matrix ranks from a budget.

Two factors of rank r hold r * (m + n) weights (and cost as many multiply-adds per token) against
m * n for the dense [m, n] matrix, so a rank is useful only while r < m * n / (m + n): `max_rank`.
"""

from __future__ import annotations

import torch


def break_even(m: int, n: int) -> float:
    """The rank at which two factors hold as many weights as the dense [m, n] matrix."""
    return m * n / (m + n)


def max_rank(m: int, n: int) -> int:
    """The largest rank r with r * (m + n) < m * n."""
    return (m * n - 1) // (m + n)


def energy_rank(s: torch.Tensor, energy: float, cap: int) -> int:
    """The smallest rank keeping `energy` of sum s^2, at most cap."""
    cum = torch.cumsum(s.double() ** 2, 0) / (s.double() ** 2).sum().clamp_min(1e-30)
    r = int((cum < energy - 1e-12).sum()) + 1
    return max(1, min(r, cap))


def budget_ranks(spectra: dict[str, tuple[torch.Tensor, int, int]], fraction: float) -> dict[str, int]:
    """Ranks (each >= 1, < break-even) whose factors hold at most `fraction` of the dense weights of all
    the matrices together, chosen greedily: the next rank unit goes where it keeps the most normalized
    energy (s_i^2 / sum s^2 of its matrix) per weight it costs (m + n).

    spectra: name -> (singular values, descending; m, n)."""
    budget = fraction * sum(m * n for _, m, n in spectra.values())
    ranks = {name: 1 for name in spectra}
    spent = sum(m + n for _, m, n in spectra.values())
    gains = []
    for name, (s, m, n) in spectra.items():
        e = (s.double() ** 2) / (s.double() ** 2).sum().clamp_min(1e-30)
        for i in range(1, min(len(s), max_rank(m, n))):  # rank i + 1 adds singular value i
            gains.append((float(e[i]) / (m + n), name, m + n))
    gains.sort(key=lambda g: -g[0])
    for _, name, cost in gains:  # within a matrix, gains fall with i: the greedy order keeps prefixes
        if spent + cost <= budget:
            ranks[name] += 1
            spent += cost
    return ranks
