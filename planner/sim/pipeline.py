"""One optimizer step of a pipeline-parallel layout, simulated with simpy.

Scenario: p pipeline stages (each with v model chunks under the interleaved schedule) run
their forward and backward passes of m micro-batches in the order of Megatron-LM's 1F1B or
interleaved 1F1B schedule. A pass starts when its input has arrived (the previous stage's
forward, the next stage's backward) and its stage is free; sending an activation or a
gradient to the neighbour blocks the sender for the transfer time, as Megatron's send/recv
do. Tensor-parallel collectives are inside each pass. After its last backward, each stage
finishes the data-parallel gradient reduction that did not hide behind that backward, then
steps the optimizer. Durations come from the cost model (planner/cost/step.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import simpy

from planner.cost.comm import group
from planner.cost.compute import layer_time, logits_time
from planner.cost.device_profile import Profile
from planner.cost.step import StepEstimate, device_models
from planner.model.specs import chunk_layers


@dataclass(frozen=True)
class PassTimes:
    """Seconds of one pass of one micro-batch through one model chunk on one stage."""

    forward: list[list[float]]       # [stage][chunk]
    backward: list[list[float]]
    p2p_s: float
    tail_s: list[float]              # exposed DP reduction + optimizer after the last backward, per stage


@dataclass
class StepSimulation:
    step_s: float
    timeline: list[dict] = field(default_factory=list)

    def busy_fraction(self, stage: int) -> float:
        busy = sum(r["end_s"] - r["start_s"] for r in self.timeline
                   if r["stage"] == stage and r["kind"] in ("forward", "backward"))
        return busy / self.step_s


def pass_times(est: StepEstimate, profile: Profile) -> PassTimes:
    """Per-pass durations of a costed layout, the same terms estimate_step adds up."""
    dev, net = device_models(profile)
    model, lay = est.model, est.layout
    p, v = lay.pp, lay.interleave
    lt = layer_time(dev, model, lay)
    b = est.breakdown
    m = lay.micro_batches
    chunks = chunk_layers(model.layers, p * v, lay.ends_in_split)
    # Per-layer tensor-parallel and recompute time, recovered from the step's own totals (the
    # slowest stage's, as estimate_step charged them).
    layers_max = max(1, est.critical_layers)
    logit_f, logit_b = logits_time(dev, model, lay)
    tp_layer = b.tp_comm_s / (m * layers_max)
    rc_layer = b.recompute_s / (m * layers_max)
    tp_fwd_share = 0.5 if lay.recompute != "full" else 1 / 3
    fwd = [[chunks[s + k * p] * (lt.forward + tp_fwd_share * tp_layer) for k in range(v)] for s in range(p)]
    bwd = [[chunks[s + k * p] * (lt.backward + (1 - tp_fwd_share) * tp_layer + rc_layer) for k in range(v)]
           for s in range(p)]
    fwd[p - 1][v - 1] += logit_f
    bwd[p - 1][v - 1] += logit_b
    pp_group = group(p, lay.tp * lay.dp, est.cluster.gpus_per_node)
    msg = lay.micro_batch * model.seq * model.hidden * dev.bytes_per_element / lay.tp
    p2p = net.time("send_recv", msg, pp_group) if p > 1 else 0.0
    tail = [b.dp_comm_s + b.optimizer_s] * p
    return PassTimes(forward=fwd, backward=bwd, p2p_s=p2p, tail_s=tail)


def schedule_order(stage: int, p: int, v: int, m: int) -> list[tuple[str, int, int]]:
    """(kind, chunk, micro-batch) in the order stage `stage` runs them: Megatron-LM's
    non-interleaved 1F1B (v = 1) or interleaved 1F1B (forward_backward_pipelining_with_interleaving)."""
    total = m * v

    def fwd_id(k: int) -> tuple[int, int]:
        chunk = (k // p) % v
        return chunk, (k // (p * v)) * p + k % p

    def bwd_id(k: int) -> tuple[int, int]:
        chunk, mb = fwd_id(k)
        return v - 1 - chunk, mb

    warmup = min(p - stage - 1, m) if v == 1 else min((p - stage - 1) * 2 + (v - 1) * p, total)
    order: list[tuple[str, int, int]] = [("forward", *fwd_id(k)) for k in range(warmup)]
    f, bk = warmup, 0
    while f < total:
        order.append(("forward", *fwd_id(f)))
        f += 1
        order.append(("backward", *bwd_id(bk)))
        bk += 1
    while bk < total:
        order.append(("backward", *bwd_id(bk)))
        bk += 1
    return order


def simulate_step(times: PassTimes, p: int, v: int, m: int, record: bool = True) -> StepSimulation:
    env = simpy.Environment()
    done: dict[tuple[str, int, int, int], simpy.Event] = {}

    def event(kind: str, stage: int, chunk: int, mb: int) -> simpy.Event:
        key = (kind, stage, chunk, mb)
        if key not in done:
            done[key] = env.event()
        return done[key]

    timeline: list[dict] = []
    finish = [0.0] * p

    def upstream(kind: str, stage: int, chunk: int, mb: int) -> simpy.Event | None:
        """The pass whose output this one needs (already including its transfer)."""
        if kind == "forward":
            if stage > 0:
                return event("forward", stage - 1, chunk, mb)
            return event("forward", p - 1, chunk - 1, mb) if chunk > 0 else None
        if stage < p - 1:
            return event("backward", stage + 1, chunk, mb)
        return event("backward", 0, chunk + 1, mb) if chunk < v - 1 else event("forward", stage, chunk, mb)

    def stage_process(stage: int):
        for kind, chunk, mb in schedule_order(stage, p, v, m):
            dep = upstream(kind, stage, chunk, mb)
            if dep is not None:
                yield dep
            start = env.now
            duration = (times.forward if kind == "forward" else times.backward)[stage][chunk]
            yield env.timeout(duration)
            if record:
                timeline.append({"stage": stage, "kind": kind, "chunk": chunk, "micro_batch": mb,
                                 "start_s": start, "end_s": env.now})
            last_of_pipeline = (kind == "forward" and stage == p - 1 and chunk == v - 1) or (
                kind == "backward" and stage == 0 and chunk == 0)
            if p > 1 and not last_of_pipeline:
                # Blocking send to the neighbour (Megatron's p2p_communication), then hand over.
                t0 = env.now
                yield env.timeout(times.p2p_s)
                if record:
                    timeline.append({"stage": stage, "kind": "p2p", "micro_batch": mb, "start_s": t0,
                                     "end_s": env.now})
            event(kind, stage, chunk, mb).succeed()
        t0 = env.now
        yield env.timeout(times.tail_s[stage])
        if record:
            timeline.append({"stage": stage, "kind": "dp_reduce", "start_s": t0, "end_s": env.now})
        finish[stage] = env.now

    for s in range(p):
        env.process(stage_process(s))
    env.run()
    return StepSimulation(step_s=max(finish), timeline=timeline)


def simulate_estimate(est: StepEstimate, profile: Profile, record: bool = True) -> StepSimulation:
    lay = est.layout
    return simulate_step(pass_times(est, profile), lay.pp, lay.interleave, lay.micro_batches, record)
