"""Collective communication time: one home for it (as in Calculon's Network.time).

Bus-bandwidth model of NCCL's ring algorithms (nccl-tests PERFORMANCE.md): an all-reduce
moves 2(n−1)/n of the buffer through each rank, all-gather and reduce-scatter (n−1)/n.
A group inside one node runs at the NVLink bus bandwidth. A group that spans nodes is
limited by the NICs its ranks use: NCCL spreads its channels over the NICs of the node, so
a group with r ranks per node gets r NICs' worth (capped by NVLink).

Ranks are ordered as in Megatron-LM: tp varies fastest, then dp, then pp.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from planner.cost.device_profile import Profile, bus_factor

Op = Literal["all_reduce", "all_gather", "reduce_scatter", "send_recv"]


@dataclass(frozen=True)
class Group:
    """A communicator: its size, and how many of its ranks share one node."""

    size: int
    ranks_per_node: int

    @property
    def spans_nodes(self) -> bool:
        return self.size > self.ranks_per_node


def group(size: int, stride: int, gpus_per_node: int) -> Group:
    """A group of `size` ranks spaced `stride` apart in the global rank order."""
    per_node = max(1, min(size, gpus_per_node // stride)) if stride <= gpus_per_node else 1
    return Group(size=size, ranks_per_node=per_node)


class Network:
    def __init__(self, profile: Profile) -> None:
        c = profile.collectives
        self.intra_bw = float(c["intra_node"]["busbw_gbps"]) * 1e9
        self.intra_lat = float(c["intra_node"]["latency_us"]) * 1e-6
        self.inter_bw_per_gpu = float(c["inter_node"]["busbw_gbps"]) * 1e9
        self.inter_lat = float(c["inter_node"]["latency_us"]) * 1e-6
        # A measured profile's own fit of each op inside the node, where it has one (profiles/fit.py).
        self.intra_ops = {op: (float(v["busbw_gbps"]) * 1e9, float(v["latency_us"]) * 1e-6)
                          for op, v in c["intra_node"].get("ops", {}).items()}
        self.overlap_slowdown = float(c.get("overlap_slowdown", 0.0))
        self.factor = profile.time_factors()["collectives"]
        # What the runtime's tensor-parallel layer costs beyond its kernels and collectives, per
        # pass (DTensor's dispatch on the host; measured by the profiler, absent in derived profiles).
        tp = c.get("tensor_parallel", {})
        host = profile.time_factors()["host"]

        def overhead(key: str) -> dict[bool, float]:
            return {False: float(tp.get(key, 0.0)) * host, True: float(tp.get(f"sequence_parallel_{key}", 0.0)) * host}

        # What the runtime's model costs a CPU's host beyond its kernels, sharded or not (module
        # calls, views, autograd nodes), per layer pass and per micro-batch: the probe's unsharded twin.
        self.pass_overhead = float(tp.get("unsharded_layer_pass_overhead_s", 0.0)) * host
        self.micro_batch_overhead = float(tp.get("unsharded_micro_batch_overhead_s", 0.0)) * host
        self.tp_pass_overhead = overhead("layer_pass_overhead_s")
        self.tp_micro_batch_overhead = overhead("micro_batch_overhead_s")
        # and per layer under selective recompute: the checkpoint's dispatch mode around every operation.
        self.tp_selective_overhead = overhead("selective_recompute_layer_overhead_s")
        # and per layer pass and micro-batch under FSDP (zero 3): its hooks, copies and waits on the host.
        self.fsdp_pass_overhead = float(tp.get("fully_sharded_layer_pass_overhead_s", 0.0)) * host
        self.fsdp_micro_batch_overhead = float(tp.get("fully_sharded_micro_batch_overhead_s", 0.0)) * host
        # The step after the backward (clip, AdamW, zero) on the probe's models, on DTensor shards
        # and on whole tensors: (seconds per layer, the rest), and the probe's parameters for them.
        opt = tp.get("optimizer", {})
        self.optimizer_tail: dict[bool, tuple[float, float]] = {
            sharded: (float(opt[f"{kind}_layer_s"]) * host, float(opt[f"{kind}_fixed_s"]) * host)
            for sharded, kind in ((True, "sharded"), (False, "unsharded")) if f"{kind}_layer_s" in opt}
        self.optimizer_probe = (int(opt.get("layer_params", 0)), int(opt.get("fixed_params", 0)),
                                int(tp.get("probe", {}).get("ranks", 1)))

    def exposed(self, comm_s: float, compute_s: float) -> float:
        """Time a collective adds when it runs under `compute_s` of compute: the part that does
        not fit, plus the slowdown of the overlapped part (NCCL kernels take SMs and HBM
        bandwidth from the compute they hide behind)."""
        return max(0.0, comm_s - compute_s) + self.overlap_slowdown * min(comm_s, compute_s)

    def bandwidth(self, g: Group) -> float:
        if not g.spans_nodes:
            return self.intra_bw
        return min(self.intra_bw, self.inter_bw_per_gpu * g.ranks_per_node)

    def time(self, op: Op, nbytes: float, g: Group) -> float:
        """Seconds for one collective over a buffer of nbytes (the full, unsharded size)."""
        if g.size <= 1 or nbytes <= 0:
            return 0.0
        latency = self.inter_lat if g.spans_nodes else self.intra_lat
        if not g.spans_nodes and op in self.intra_ops:
            bw, latency = self.intra_ops[op]
        elif op == "send_recv":
            bw = self.inter_bw_per_gpu if g.spans_nodes else self.intra_bw
        else:
            bw = self.bandwidth(g)
        # bus_factor is 1 for send_recv: the message crosses the link once.
        return (latency + bus_factor(op, g.size) * nbytes / bw) * self.factor
