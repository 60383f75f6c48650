"""Timing of device work that holds still: warm up until the times settle, then repeat until
the spread is small (or the point's time budget is spent), and report the median with its
spread. On CUDA each call is timed with events; the host's own time to issue the call is kept
beside it, so a measurement bound by the host (small kernels, Python) shows as one.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# Warm-up ends when the median of the last three calls is within this of the three before
# (clock ramp, allocator and autotuning settle); repeats end when the interquartile range is
# within TARGET_SPREAD of the median.
SETTLED = 0.03
TARGET_SPREAD = 0.02


@dataclass(frozen=True)
class Timing:
    median_s: float
    spread: float        # interquartile range / median of the timed repeats
    reps: int
    warmup: int
    host_s: float        # median host time to issue one call (CUDA); = median_s on a CPU


def _quartile_spread(times: list[float]) -> float:
    """Interquartile range over the median's size (∞ at a zero median, as a difference can be)."""
    q1, _, q3 = statistics.quantiles(times, n=4) if len(times) >= 4 else (min(times), 0, max(times))
    med = abs(statistics.median(times))
    return (q3 - q1) / med if med else float("inf")


def _once(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(device seconds, host seconds to issue) of one call."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        start.record()
        fn()
        end.record()
        host = time.perf_counter() - t0
        end.synchronize()
        return start.elapsed_time(end) / 1e3, host
    t0 = time.perf_counter()
    fn()
    t = time.perf_counter() - t0
    return t, t


def measure(fn: Callable[[], object], device: torch.device, min_reps: int = 5, max_reps: int = 50,
            budget_s: float = 1.0) -> Timing:
    """Settle, then time fn() until its spread is under TARGET_SPREAD, max_reps, or budget_s."""
    began = time.perf_counter()
    warm: list[float] = []
    while len(warm) < 20 and time.perf_counter() - began < budget_s / 2:
        warm.append(_once(fn, device)[0])
        if len(warm) >= 6:
            before, last = statistics.median(warm[-6:-3]), statistics.median(warm[-3:])
            if abs(last / before - 1) <= SETTLED:
                break
    if not warm:
        warm.append(_once(fn, device)[0])
    times, hosts = [], []
    began = time.perf_counter()
    while len(times) < max_reps:
        t, host = _once(fn, device)
        times.append(t)
        hosts.append(host)
        if len(times) >= min_reps and (_quartile_spread(times) <= TARGET_SPREAD
                                       or time.perf_counter() - began > budget_s):
            break
    return Timing(statistics.median(times), _quartile_spread(times), len(times), len(warm),
                  statistics.median(hosts))


def time_lockstep(fn: Callable[[], object], device: torch.device, warmup: int, reps: int) -> float:
    """Mean of a fixed number of calls, for collectives: every rank must make the same calls. A
    step pays each call's expected time, its tail included; on a shared CPU host gloo's calls are
    heavy-tailed (a 64 KB all-reduce: median 0.34 ms, mean 1.4–1.9 ms; BENCHMARKS.md#probe-kernels-cores)."""
    for _ in range(warmup):
        fn()
    return statistics.mean(_once(fn, device)[0] for _ in range(reps))


def time_interleaved(fns: dict[str, Callable[[], object]], device: torch.device, warmup: int,
                     rounds: int) -> list[dict[str, float]]:
    """Each function's time in every round, the functions called in turns (one call of each per
    round) so that a machine's slow phases fall on all of them alike: for figures taken as
    differences of these times, per round. A fixed count of calls, as time_lockstep, for
    collectives."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    return [{name: _once(fn, device)[0] for name, fn in fns.items()} for _ in range(rounds)]


def median_and_spread(values: list[float]) -> tuple[float, float]:
    """The median of per-round figures and their spread."""
    return statistics.median(values), _quartile_spread(values)
