"""Step time of a layout from a profile: the cost model's one entry point, estimate_step.

    step = m·(compute + recompute + exposed TP comm) of the slowest pipeline stage
         + pipeline bubble + pipeline point-to-point + exposed data-parallel comm + optimizer

The parts add up to the total (a test checks it). Sources: Narayanan et al. 2021 (1F1B and
interleaved bubble (p−1)/(v·m), scatter/gather of pipeline messages), Korthikanti et al.
2022 (sequence parallelism, selective recompute), ZeRO (Rajbhandari et al. 2020) and
PyTorch FSDP (Zhao et al. 2023) for sharded data parallelism.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import cache

from planner.cost.comm import Network, group
from planner.cost.compute import layer_time, logits_time
from planner.cost.device import DeviceModel, core_sharing
from planner.cost.device_profile import Profile
from planner.model import anatomy
from planner.model.flops import step_flops
from planner.model.memory import MemoryEstimate, memory_per_gpu, stage_params
from planner.model.specs import ClusterSpec, Layout, ModelSpec, Software, get_gpu, stage_layers

# Adam step per parameter: read fp32 grad, master, m, v (16 B), write master, m, v (12 B)
# and the bf16 weight (2 B).
OPTIMIZER_BYTES_PER_PARAM = 30
# Gradients are reduced in fp32 unless the run says otherwise (Software.grad_reduce_bytes: Megatron with
# bf16, FSDP's reduce_dtype); weights are gathered in the compute dtype (bf16 under mixed precision, fp32
# in an fp32 run): DeviceModel.bytes_per_element.


@dataclass(frozen=True)
class StepBreakdown:
    """Seconds per optimizer step on the critical path; the fields add up to the step."""

    compute_s: float
    recompute_s: float
    tp_comm_s: float          # tensor-parallel collectives (and, on a CPU, the runtime's host time around them)
    pp_comm_s: float
    bubble_s: float
    dp_comm_s: float
    optimizer_s: float

    @property
    def total_s(self) -> float:
        return (self.compute_s + self.recompute_s + self.tp_comm_s + self.pp_comm_s
                + self.bubble_s + self.dp_comm_s + self.optimizer_s)


@dataclass(frozen=True)
class StepEstimate:
    model: ModelSpec
    cluster: ClusterSpec
    layout: Layout
    breakdown: StepBreakdown
    memory: MemoryEstimate
    model_flops: float
    hardware_flops: float
    profile_name: str
    peak_tflops: float
    critical_layers: int = 0        # the layers of the slowest pipeline stage (all of them without pp)

    @property
    def iteration_s(self) -> float:
        return self.breakdown.total_s

    @property
    def tokens_per_s(self) -> float:
        return self.layout.global_batch * self.model.seq / self.iteration_s

    @property
    def tflops_per_gpu_mfu(self) -> float:
        return self.model_flops / self.iteration_s / self.cluster.gpus / 1e12

    @property
    def tflops_per_gpu_hfu(self) -> float:
        return self.hardware_flops / self.iteration_s / self.cluster.gpus / 1e12

    @property
    def mfu(self) -> float:
        return self.tflops_per_gpu_mfu / self.peak_tflops

    @property
    def hfu(self) -> float:
        return self.tflops_per_gpu_hfu / self.peak_tflops

    @property
    def memory_gib_per_gpu(self) -> float:
        return self.memory.total_gib

    @property
    def fits(self) -> bool:
        return self.memory.total_gib <= self.cluster.gpu.memory_gib

    def to_dict(self) -> dict:
        return {
            "iteration_s": self.iteration_s,
            "tokens_per_s": self.tokens_per_s,
            "tflops_per_gpu_hfu": self.tflops_per_gpu_hfu,
            "tflops_per_gpu_mfu": self.tflops_per_gpu_mfu,
            "mfu": self.mfu,
            "hfu": self.hfu,
            "memory_gib_per_gpu": self.memory_gib_per_gpu,
            "fits": self.fits,
            "layout": self.layout.to_dict(),
            "breakdown_s": asdict(self.breakdown),
            "memory_gib": {**asdict(self.memory), "total_gib": self.memory.total_gib},
            "profile": self.profile_name,
        }


def optimizer_step_s(dev: DeviceModel, net: Network, lay: Layout, opt_params: float, layers_max: int) -> float:
    """The step after the backward: AdamW's bytes through memory and, on a CPU, the host's time
    around them (the gradient clip, each tensor's dispatch, DTensor's on shards), which the
    profiler measured per layer and per chunk on its probe models; the probe's own bytes, as this
    device model charges them, are taken out of the measured times. On a GPU the host issues the
    step while the backward still runs: only the bytes count."""
    step_bytes = opt_params * OPTIMIZER_BYTES_PER_PARAM
    sharded = lay.tp > 1 or (lay.dp > 1 and lay.zero >= 1)
    if dev.queued or sharded not in net.optimizer_tail:
        return dev.memory_bound_s(step_bytes, kernels=4)
    layer_s, fixed_s = net.optimizer_tail[sharded]
    layer_params, fixed_params, ranks = net.optimizer_probe
    shards = ranks if sharded else 1

    def host(measured_s: float, params: float) -> float:
        return max(0.0, measured_s - dev.memory_bound_s(params / shards * OPTIMIZER_BYTES_PER_PARAM, kernels=0))

    return (dev.memory_bound_s(step_bytes, kernels=0) + layers_max * host(layer_s, layer_params)
            + lay.interleave * host(fixed_s, fixed_params))


@cache
def device_models(profile: Profile) -> tuple[DeviceModel, Network]:
    return DeviceModel(profile), Network(probe_residuals(profile))


# The parts of the profiler's tensor-parallel probe the residuals are taken from (profiles/collectives.py).
_PROBE_KINDS = {False: "plain", True: "sequence_parallel"}


def probe_residuals(profile: Profile) -> Profile:
    """The profile with the runtime's host times taken as what the cost model does not charge of
    the probe the profiler timed: the runtime's own 1- and 3-layer models whole, where timed (per
    layer and the 1-layer step: what any run pays on a CPU), and beyond that, sharded by tensor
    parallelism (per layer, with and without selective recompute, and the 1-layer step) and, where
    timed, by FSDP (per layer and the 1-layer step). The profiler's own figures are differences
    against the probe's unsharded twin, whose small kernels the model charges less than they take
    (their dispatch, the views and the autograd engine around them), so the prediction of the probe
    fell short by that; as residuals of the model the prediction of the probe is its measured time,
    whatever the profile's time factors (`--refit` scales the residuals with its host factor). The
    model they are taken against runs on the probe's own cores: a CPU run's sharing of them
    (planner/plan/validation.py shared_cores) is undone and the probe's ranks' own applied (each computed
    on `rank_cores` of the profile's threads), so that the probe's kernels are charged as kernels.
    A profile without the probe's sharded times is returned as it is."""
    tp = profile.collectives.get("tensor_parallel", {})
    probe = tp.get("probe", {})
    if not all("sharded_layer_s" in probe.get(kind, {}) for kind in _PROBE_KINDS.values()):
        return profile
    ranks, b, rank_cores = int(probe["ranks"]), int(probe["micro_batch"]), probe.get("rank_cores")
    sharing = profile.device.get("shared_cores", {}).get("scaled", {})
    probe_sharing = core_sharing(profile, rank_cores, rank_cores and rank_cores * ranks)
    as_probed = {k: v / sharing.get(k, 1.0) * probe_sharing[k] for k, v in profile.time_factors().items()}
    bare = replace(profile, calibration={"time_factors": as_probed},
                   device={k: v for k, v in profile.device.items() if k != "shared_cores"},
                   collectives={**profile.collectives, "tensor_parallel": {}})
    # Only the node's size matters to the step of a layout this small.
    cluster = ClusterSpec(gpu=get_gpu("h200-141gb"), gpus=ranks, gpus_per_node=ranks)

    def charges(probed: Profile) -> Callable[..., float]:
        """The model's charge for a probe model (its step less the step after the backward) on `probed`."""
        @cache      # each probe model's charge is needed more than once
        def charged(layers: int, **layout) -> float:
            model = ModelSpec(layers=layers, hidden=probe["hidden"], heads=probe["heads"],
                              ffn=4 * probe["hidden"], vocab=probe["vocab"], seq=probe["seq"])
            shape = {"tp": ranks, "dp": 1, "zero": 0, **layout}
            lay = Layout(pp=1, micro_batch=b, global_batch=b * shape["dp"], **shape)
            step = estimate_step(model, cluster, lay, probed).breakdown
            return step.total_s - step.optimizer_s
        return charged

    def per_layer(charged: Callable[..., float], measured_slope: float, **layout) -> float:
        """Each of a layer's passes (forward, backward): half of what the model leaves of its slope."""
        return max(0.0, measured_slope - (charged(3, **layout) - charged(1, **layout)) / 2) / 2

    out = dict(tp)
    plain = probe["plain"]
    charged = charges(bare)
    if "unsharded_3_layers_s" in plain:
        # The unsharded twin, the runtime's own model whole on each rank: what the model leaves of
        # it is the host's work around any layer's kernels on a CPU (module calls, views, autograd
        # nodes), which every run pays; the sharded models' residuals are taken beyond it.
        pass_s = per_layer(charged, (plain["unsharded_3_layers_s"] - plain["unsharded_1_layers_s"]) / 2, tp=1)
        out["unsharded_layer_pass_overhead_s"] = pass_s
        out["unsharded_micro_batch_overhead_s"] = max(
            0.0, plain["unsharded_1_layers_s"] - charged(1, tp=1) - 2 * pass_s)
        charged = charges(replace(bare, collectives={**bare.collectives, "tensor_parallel": {
            k: out[k] for k in ("unsharded_layer_pass_overhead_s", "unsharded_micro_batch_overhead_s")}}))
    for sp, kind in _PROBE_KINDS.items():
        p, key = probe[kind], "sequence_parallel_" if sp else ""
        pass_s = per_layer(charged, p["sharded_layer_s"], sequence_parallel=sp)
        out[f"{key}layer_pass_overhead_s"] = pass_s
        # The 1-layer step's rest is per micro-batch (the vocabulary-parallel ends); selective
        # recompute re-runs a pass and adds its checkpoint's own time (estimate_step).
        out[f"{key}micro_batch_overhead_s"] = max(
            0.0, p["tensor_parallel_1_layers_s"] - charged(1, sequence_parallel=sp) - 2 * pass_s)
        selective = per_layer(charged, p["selective_recompute_sharded_layer_s"], sequence_parallel=sp,
                              recompute="selective")
        out[f"{key}selective_recompute_layer_overhead_s"] = max(0.0, 2 * selective - 3 * pass_s)
    if "fully_sharded_layer_s" in plain:
        fsdp = {"tp": 1, "dp": ranks, "zero": 3}
        pass_s = per_layer(charged, plain["fully_sharded_layer_s"], **fsdp)
        out["fully_sharded_layer_pass_overhead_s"] = pass_s
        out["fully_sharded_micro_batch_overhead_s"] = max(
            0.0, plain["fully_sharded_1_layers_s"] - charged(1, **fsdp) - 2 * pass_s)
    return replace(profile, collectives={**profile.collectives, "tensor_parallel": out})


def model_host_s(dev: DeviceModel, net: Network) -> tuple[float, float]:
    """The host's time around any model's kernels, per layer pass and per micro-batch: on a CPU the
    host runs it (planner/cost/comm.py Network.pass_overhead); on a GPU it is issue time, which the
    kernels' own launches already stand for."""
    return (0.0, 0.0) if dev.queued else (net.pass_overhead, net.micro_batch_overhead)


def tp_comm_per_pass_s(net: Network, model: ModelSpec, layout: Layout, bytes_per_element: int,
                       gpus_per_node: int) -> float:
    """Tensor-parallel collectives of one layer's forward (or backward) pass: two all-reduces of
    the activations, or with sequence parallelism two all-gathers and two reduce-scatters, the same
    volume (Korthikanti et al. 2022, §4.2.2)."""
    tp_group = group(layout.tp, 1, gpus_per_node)
    activation_bytes = layout.micro_batch * model.seq * model.hidden * bytes_per_element
    if layout.sequence_parallel:
        return 2 * (net.time("all_gather", activation_bytes, tp_group)
                    + net.time("reduce_scatter", activation_bytes, tp_group))
    return 2 * net.time("all_reduce", activation_bytes, tp_group)


def compute_lower_bound_s(model: ModelSpec, layout: Layout, profile: Profile,
                          software: Software = Software()) -> float:
    """A floor under estimate_step's total: the slowest stage's layer compute alone, every other
    part being ≥ 0. The layout search uses it to skip layouts that cannot win."""
    dev, _ = device_models(profile)
    lt = layer_time(dev, model, layout, software)
    return layout.micro_batches * max(stage_layers(model.layers, layout)) * (lt.forward + lt.backward)


def _recompute_s(net: Network, lay: Layout, lt, host_pass: float, tp_fwd: float, tp_host: float,
                 activation_bytes: float, gpn: int) -> tuple[float, float]:
    """(a layer's recomputed compute, its recomputed tensor-parallel time) per micro-batch pass, by
    recompute mode; `tp_host` is the host time around tensor parallelism, the selective checkpoint's own
    included."""
    if lay.recompute == "full":
        return lt.forward + host_pass, tp_fwd
    if lay.recompute == "selective":
        recompute_layer = lt.attention_core_fwd if lay.attention == "unfused" else lt.norm_act_fwd
        # The forward is re-run with the products, reduce-scatters and all-reduces kept: its host
        # time around tensor parallelism again, the selective checkpoint's own (measured with it)
        # and, under sequence parallelism, its two all-gathers (runtime/model/decoder.py _saved_ops).
        tp_recompute = tp_host
        if lay.sequence_parallel:
            tp_recompute += 2 * net.time("all_gather", activation_bytes, group(lay.tp, 1, gpn))
        return recompute_layer, tp_recompute
    return 0.0, 0.0


def _layernorm_sync_s(net: Network, model: ModelSpec, lay: Layout, software: Software, layers_max: int,
                      gpn: int) -> float:
    """The all-reduce of the LayerNorms' gradients over the tensor-parallel group under sequence parallelism."""
    if lay.tp > 1 and lay.sequence_parallel:
        layernorm_grads = layers_max * anatomy.layernorm_params(model) + anatomy.final_layernorm_params(model)
        return net.time("all_reduce", layernorm_grads * software.grad_reduce_bytes, group(lay.tp, 1, gpn))
    return 0.0


def _pipeline_s(dev: DeviceModel, net: Network, lay: Layout, mean_stage_mb: float, activation_bytes: float,
                pp_group) -> tuple[float, float]:
    """(the pipeline bubble, the point-to-point time) of one step."""
    p, v, m, t = lay.pp, lay.interleave, lay.micro_batches, lay.tp
    if p <= 1:
        return 0.0, 0.0
    # 1F1B fill and drain: (p−1)/v stage-times of a micro-batch (Narayanan et al. 2021, §2.2), with
    # 1, 2, … p−1 of the p stages computing; where ranks share a CPU's cores, the busy ones run faster.
    bubble = (p - 1) / v * mean_stage_mb * statistics.mean(1 / dev.busy_speedup(k / p) for k in range(1, p))
    # Point-to-point: each micro-batch's activation forward and gradient back, per model chunk,
    # scattered over the tp ranks; the blocking send/recv of Megatron's schedule sits on the
    # critical path.
    pp_comm = 2 * v * m * net.time("send_recv", activation_bytes / t, pp_group)
    return bubble, pp_comm


def _data_parallel_s(dev: DeviceModel, net: Network, lay: Layout, software: Software, grads: float,
                     stage_mb: float, layers_max: int, backward_layer: float, forward_layer: float,
                     fsdp_host: float, fsdp_ends: float, dp_group) -> float:
    """The data-parallel time of one step left on the critical path: FSDP's gathers and reduce-scatters
    (ZeRO 3), or the gradient reduction overlapped with the backward and the distributed optimizer's
    gather (ZeRO 0–2)."""
    if lay.dp <= 1:
        return 0.0
    m = lay.micro_batches
    if lay.zero >= 3:
        # FSDP: per micro-batch gather weights for forward and backward, reduce-scatter
        # gradients, prefetched under the micro-batch's compute; the first gather is exposed.
        per_mb = (2 * net.time("all_gather", grads * dev.bytes_per_element, dp_group)
                  + net.time("reduce_scatter", grads * software.grad_reduce_bytes, dp_group))
        first_gather = net.time("all_gather", grads * dev.bytes_per_element / layers_max, dp_group)
        dp_comm = m * (net.exposed(per_mb, stage_mb) + first_gather + 2 * layers_max * fsdp_host + fsdp_ends)
    else:
        reduce_op = "all_reduce" if lay.zero == 0 else "reduce_scatter"
        grad_sync = net.time(reduce_op, grads * software.grad_reduce_bytes, dp_group)
        # Bucketed reduction overlaps the backward it follows, all but the last bucket: once
        # per step after gradient accumulation (zero 0/1), or after every micro-batch when
        # the gradients themselves are sharded (zero 2).
        window = layers_max * backward_layer * (1 - 1 / layers_max)
        last_bucket = grad_sync / layers_max
        syncs = m if lay.zero == 2 else 1
        if software.overlap_grad_reduce:
            dp_comm = syncs * (last_bucket + net.exposed(grad_sync - last_bucket, window))
        else:                 # all of it after the backward, on the critical path
            dp_comm = syncs * grad_sync
        if lay.zero >= 1:
            param_gather = net.time("all_gather", grads * dev.bytes_per_element, dp_group)
            if software.overlap_param_gather:
                # Bucket by bucket under the next step's first forward: the first bucket waits.
                first = param_gather / layers_max
                dp_comm += first + net.exposed(param_gather - first, layers_max * forward_layer)
            else:
                dp_comm += param_gather
    return dp_comm


def _slowest_stage(layers: list[int], per_layer: float, ends: float, tp_ends: float) -> tuple[int, bool, float]:
    """(the slowest stage's layers, whether it is the last, the mean stage's time) per micro-batch: the
    last stage carries the output layer and loss, each stage its layers."""
    p = len(layers)
    totals = [n * per_layer + tp_ends + (ends if s == p - 1 else 0.0) for s, n in enumerate(layers)]
    slowest = max(range(p), key=lambda s: (totals[s], s))
    return layers[slowest], slowest == p - 1, sum(totals) / p


def estimate_step(model: ModelSpec, cluster: ClusterSpec, layout: Layout, profile: Profile,
                  memory: MemoryEstimate | None = None, software: Software = Software()) -> StepEstimate:
    """Predict one optimizer step of `layout` (already validated) on `cluster`, run by `software`."""
    dev, net = device_models(profile)
    lay = layout
    t, p, m, gpn = lay.tp, lay.pp, lay.micro_batches, cluster.gpus_per_node
    dp_group, pp_group = group(lay.dp, t, gpn), group(p, t * lay.dp, gpn)
    lt = layer_time(dev, model, lay, software)
    activation_bytes = lay.micro_batch * model.seq * model.hidden * dev.bytes_per_element
    tp_fwd = tp_bwd = tp_comm_per_pass_s(net, model, lay, dev.bytes_per_element, gpn)
    # The runtime's host time around tensor parallelism (measured by the profiler): on a GPU it
    # is issue time, hidden under the kernels unless the host is the bottleneck; on a CPU it adds,
    # per layer pass and, for the vocabulary-parallel ends, per micro-batch.
    tp_ends = tp_host = selective_host = 0.0
    if t > 1:
        overhead = net.tp_pass_overhead[lay.sequence_parallel]
        selective = net.tp_selective_overhead[lay.sequence_parallel] if lay.recompute == "selective" else 0.0
        if dev.queued:
            lt = replace(lt, issue_fwd=lt.issue_fwd + overhead, issue_bwd=lt.issue_bwd + overhead + selective)
        else:
            tp_host, selective_host = overhead, selective
            tp_fwd, tp_bwd = tp_fwd + overhead, tp_bwd + overhead
            tp_ends = net.tp_micro_batch_overhead[lay.sequence_parallel]

    # FSDP's host time (measured by the profiler's probe, as tensor parallelism's): issue time on a
    # GPU; on a CPU it adds, per layer pass and per micro-batch, to the data-parallel time.
    fsdp_host = fsdp_ends = 0.0
    if lay.dp > 1 and lay.zero >= 3:
        if dev.queued:
            lt = replace(lt, issue_fwd=lt.issue_fwd + net.fsdp_pass_overhead,
                         issue_bwd=lt.issue_bwd + net.fsdp_pass_overhead)
        else:
            fsdp_host, fsdp_ends = net.fsdp_pass_overhead, net.fsdp_micro_batch_overhead

    host_pass, host_ends = model_host_s(dev, net)
    recompute_layer, tp_recompute = _recompute_s(net, lay, lt, host_pass, tp_fwd, tp_host + selective_host,
                                                 activation_bytes, gpn)

    logit_fwd, logit_bwd = logits_time(dev, model, lay)
    # The last stage carries the output layer and loss (and the first the embedding; on a CPU the
    # host's time around the ends is with them). The slowest stage sets the pace: the last where the
    # stages hold as many layers, a fuller one where the ends take a layer's place in the split.
    ends = logit_fwd + logit_bwd + host_ends
    compute_layer, tp_layer = lt.forward + lt.backward + 2 * host_pass, tp_fwd + tp_bwd + tp_recompute
    layers_max, on_last, mean_stage_mb = _slowest_stage(stage_layers(model.layers, lay),
                                                        compute_layer + recompute_layer + tp_layer, ends, tp_ends)
    compute_mb = layers_max * compute_layer + (ends if on_last else 0.0)
    recompute_mb = layers_max * recompute_layer
    tp_mb = layers_max * tp_layer + tp_ends
    # Under sequence parallelism each rank's LayerNorm weights saw only its slice of the sequence:
    # their gradients are summed over the group once a step, flattened into one all-reduce
    # (Megatron-LM's _allreduce_layernorm_grads; runtime/parallel/parallelize.py).
    layernorm_sync = _layernorm_sync_s(net, model, lay, software, layers_max, gpn)
    stage_mb = compute_mb + recompute_mb + tp_mb

    bubble, pp_comm = _pipeline_s(dev, net, lay, mean_stage_mb, activation_bytes, pp_group)

    grads = stage_params(model, lay)
    dp_comm = _data_parallel_s(dev, net, lay, software, grads, stage_mb, layers_max,
                               lt.backward + recompute_layer, lt.forward, fsdp_host, fsdp_ends, dp_group)

    opt_params = grads / (lay.dp if lay.zero >= 1 else 1)
    optimizer = optimizer_step_s(dev, net, lay, opt_params, layers_max)

    breakdown = StepBreakdown(
        compute_s=m * compute_mb,
        recompute_s=m * recompute_mb,
        tp_comm_s=m * tp_mb + layernorm_sync,
        pp_comm_s=pp_comm,
        bubble_s=bubble,
        dp_comm_s=dp_comm,
        optimizer_s=optimizer,
    )
    model_flops, hardware_flops = step_flops(model, lay.global_batch, lay.recompute, lay.attention)
    return StepEstimate(
        model=model, cluster=cluster, layout=lay, breakdown=breakdown,
        memory=memory or memory_per_gpu(model, lay), model_flops=model_flops,
        hardware_flops=hardware_flops, profile_name=profile.name, peak_tflops=profile.peak_tflops,
        critical_layers=layers_max,
    )
