"""The latency table both path benchmarks print: median and p99 per path, and each
median as a ratio to the baseline path measured in the same run."""

from __future__ import annotations

import statistics


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def print_latency_table(
    title: str, samples: dict[str, list[float]], baseline: str, digits: int
) -> None:
    base = statistics.median(samples[baseline])
    print(title)
    print(f"  {'path':<16} {'median':>8} {'p99':>8} {f'median / {baseline}':>22}")
    for name, values in samples.items():
        median = statistics.median(values)
        print(
            f"  {name:<16} {median:8.{digits}f} {percentile(values, 0.99):8.{digits}f}"
            f" {median / base:22.2f}"
        )
