"""Which cores a CPU rank computes on: one physical core each where the machine has enough, so that
ranks on one host do not fight over them (and the profiler's probes measure what a run gets)."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def _physical_core(cpu: int) -> tuple[int, int, int]:
    """A logical CPU's (package, core, number): hyperthreads of one core sort side by side, so that a
    rank's share of the list is whole cores (Linux often numbers a core's second thread far from its
    first: 0 and 8 of 16)."""
    topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
    try:
        return int((topology / "physical_package_id").read_text()), int((topology / "core_id").read_text()), cpu
    except (OSError, ValueError):
        return 0, cpu, cpu


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a cpuset or taskset gives fewer than the
    machine has), or the machine's count where the platform has no affinity."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def rank_threads(local_ranks: int) -> int:
    """A CPU rank's intra-op threads: its whole share of the usable cores, at least one (ranks on
    one machine split its cores; more threads than cores only contend)."""
    return max(1, usable_cores() // max(1, local_ranks))


def pin_to_own_cores(local_rank: int, local_ranks: int) -> list[int] | None:
    """Keep a CPU rank's computing thread, and the intra-op threads it starts later (one per core of
    its share: fewer than the machine's in a cpuset), on its own share of the cores this process may
    use; the threads gloo started at init_process_group (call this after it) stay free to run
    wherever a core is idle. Left free, the ranks' computing threads migrate onto each other's cores:
    a tensor-parallel micro-batch of two 1-thread ranks took 132–144 ms free and 107–116 ms pinned,
    and no faster with gloo's threads pinned too (BENCHMARKS.md#cpu-pinning). The cores pinned, or None (one
    rank, or a platform without CPU affinity)."""
    if local_ranks <= 1 or not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0), key=_physical_core)
    per = rank_threads(local_ranks)
    start = local_rank * per % len(allowed)
    cores = allowed[start:start + per]
    os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))
    return cores
