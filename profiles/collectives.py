"""Collective bandwidth between local processes through torch.distributed.

NCCL between the GPUs of this machine, or gloo between `nproc` CPU processes. Reported as
bus bandwidth (nccl-tests convention): all-reduce moves 2(n−1)/n of the buffer per rank,
all-gather and reduce-scatter (n−1)/n, send/recv the buffer once.
"""

from __future__ import annotations

import os
import socket
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from profiles.schema import bus_factor
from profiles.timing import time_lockstep

OPS = ("all_reduce", "all_gather", "reduce_scatter", "send_recv")
# torch 2.13 renamed the tensor collectives; the GPU image's torch 2.11 has only the old names.
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, nproc: int, port: int, backend: str, sizes: list[int], reps: int, out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=rank, world_size=nproc)
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    rows = [row for nbytes in sizes for row in _measure_size(rank, nproc, nbytes, device, reps)]
    if rank == 0:
        import json

        with open(out_path, "w") as f:
            json.dump(rows, f)
    dist.barrier()
    dist.destroy_process_group()


def _measure_size(rank: int, nproc: int, nbytes: int, device: torch.device, reps: int) -> list[dict]:
    numel = max(nproc, nbytes // 4) // nproc * nproc
    buf = torch.ones(numel, device=device)
    shard = torch.ones(numel // nproc, device=device)
    peer = rank ^ 1

    def send_recv() -> None:
        if peer >= nproc:
            return
        if rank % 2 == 0:
            dist.send(buf, peer)
            dist.recv(buf, peer)
        else:
            dist.recv(buf, peer)
            dist.send(buf, peer)

    ops = {
        "all_reduce": lambda: dist.all_reduce(buf),
        "all_gather": lambda: _all_gather(buf, shard),
        "reduce_scatter": lambda: _reduce_scatter(shard, buf),
        "send_recv": send_recv,
    }
    rows = []
    for op, fn in ops.items():
        dist.barrier()
        t = time_lockstep(fn, device, warmup=1, reps=reps)
        if op == "send_recv":
            t /= 2  # a round trip is two transfers
        size = numel * 4
        rows.append({"op": op, "ranks": nproc, "bytes": size, "time_s": t,
                     "busbw_gbps": bus_factor(op, nproc) * size / t / 1e9})
    return rows


def measure_collectives(nproc: int, backend: str, sizes: list[int], reps: int = 3) -> list[dict]:
    """Spawn nproc processes, measure every op at every size, return rank 0's rows."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.json")
        mp.spawn(_worker, args=(nproc, _free_port(), backend, sizes, reps, out), nprocs=nproc, join=True)
        import json

        with open(out) as f:
            return json.load(f)
