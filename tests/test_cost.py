"""The step-time model: a hand-worked step, and it moves the right way."""

from dataclasses import replace
from pathlib import Path

import pytest

from planner.cost.device_profile import builtin_profile
from planner.cost.step import estimate_step, probe_residuals
from planner.layout.candidates import PartialLayout
from planner.layout.search import search_layout
from planner.model.memory import stage_params
from planner.model.specs import ClusterSpec, Layout, ModelSpec, Software, get_gpu


@pytest.fixture
def a800():
    return builtin_profile("a800-80gb")


def test_flash_attention_is_charged_its_matmuls_scores_and_rows_by_hand(a800):
    """A profile's attention terms (planner/cost/device.py flash_work): a causal kernel of b = 2, s = 1024,
    h = 16, d = 64 executes 2·b·s²·h·d = 4.29 GFLOP of matmuls forward (2.5× backward), works on
    b·h·s²/2 = 16.8 M scores and b·h·s = 32,768 query rows."""
    from planner.cost.step import device_models

    profile = replace(a800, gemm={"e_max": 0.5, "k_half": 0, "overhead_us": 0, "points": []},
                      attention={"fwd_eff": 0.5, "bwd_eff": 0.25, "fwd_score_ps": 2.0, "bwd_score_ps": 6.0,
                                 "fwd_row_ps": 100.0, "bwd_row_ps": 300.0, "points": []})
    dev, _ = device_models(profile)
    flops, scores, rows = 4_294_967_296, 16_777_216, 32_768
    peak = 312e12
    fwd, bwd = dev.flash_attention_s(2, 1024, 16, 64)
    assert fwd == pytest.approx(flops / (0.5 * peak) + 2e-12 * scores + 100e-12 * rows, rel=1e-9)
    assert bwd == pytest.approx(2.5 * flops / (0.25 * peak) + 6e-12 * scores + 300e-12 * rows, rel=1e-9)


def test_compute_is_six_flops_per_parameter_and_token_by_hand(a800):
    """On a synthetic device whose GEMMs run at exactly half of peak (no launch cost, no
    shape effect), whose flash attention runs at 1/2 forward and 1/4 backward, and whose memory
    is unbounded, the step's compute is worked out by hand: 6 FLOPs per weight and token
    (forward 2, backward 4; Kaplan et al. 2020) on the 12h² weights of a GPT layer and the h·V
    output layer (Narayanan et al. 2021, eq. 3), plus the causal flash kernel's executed FLOPs
    (2·b·s²·a·d forward, 2.5× that backward; Dao 2023)."""
    profile = replace(a800, gemm={"e_max": 0.5, "k_half": 0, "overhead_us": 0, "points": []},
                      attention={"fwd_eff": 0.5, "bwd_eff": 0.25, "points": []},
                      memory_bound={"bandwidth_gbps": 1e15, "overhead_us": 0, "points": []})
    l, h, a, s, v = 2, 4096, 32, 2048, 32768
    model = ModelSpec(layers=l, hidden=h, heads=a, ffn=4 * h, vocab=v, seq=s)
    cluster = ClusterSpec(gpu=get_gpu("a800-80gb"), gpus=1)
    est = estimate_step(model, cluster, Layout(tp=1, pp=1, dp=1, micro_batch=1, global_batch=1), profile)
    peak = 312e12
    gemms = 6 * s * (l * 12 * h * h + h * v) / (0.5 * peak)
    flash = 2 * s * s * a * (h // a)
    attention = l * (flash / (0.5 * peak) + 2.5 * flash / (0.25 * peak))
    assert est.breakdown.compute_s == pytest.approx(gemms + attention, rel=1e-6)
    assert est.breakdown.tp_comm_s == est.breakdown.pp_comm_s == est.breakdown.dp_comm_s == est.breakdown.bubble_s == 0


def _synthetic(a800, membw_gbps: float = 1e15):
    """A device with GEMMs at half of peak, flash at 1/2 and 1/4, no launch costs, `membw_gbps` of
    memory bandwidth for element-wise kernels, and a network of 100 GB/s bus bandwidth, no latency."""
    return replace(a800, gemm={"e_max": 0.5, "k_half": 0, "overhead_us": 0, "points": []},
                   attention={"fwd_eff": 0.5, "bwd_eff": 0.25, "points": []},
                   memory_bound={"bandwidth_gbps": membw_gbps, "overhead_us": 0, "points": []},
                   collectives={"intra_node": {"busbw_gbps": 100.0, "latency_us": 0.0},
                                "inter_node": {"busbw_gbps": 100.0, "latency_us": 0.0}, "overlap_slowdown": 0.0})


SMALL = ModelSpec(layers=2, hidden=1024, heads=8, ffn=4096, vocab=8192, seq=1024)


def _step(profile, software=Software(), model=SMALL, **layout):
    gpus = layout.get("dp", 1)
    cluster = ClusterSpec(gpu=get_gpu("a800-80gb"), gpus=gpus)
    lay = Layout(tp=1, pp=1, dp=gpus, micro_batch=1, global_batch=gpus, **{k: v for k, v in layout.items()
                                                                         if k != "dp"})
    return estimate_step(model, cluster, lay, profile, software=software).breakdown


def test_flash_attention_v1_doubles_the_attention_kernel_by_hand(a800):
    """FlashAttention v1 is charged twice FlashAttention-2's time (Dao 2023: about 2× faster):
    the step grows by the flash kernel's own time, worked out by hand on the synthetic device."""
    profile = _synthetic(a800)
    l, a, s, d = SMALL.layers, SMALL.heads, SMALL.seq, SMALL.head_dim
    flash = 2 * s * s * a * d
    kernel = l * (flash / (0.5 * 312e12) + 2.5 * flash / (0.25 * 312e12))
    v1 = _step(profile, Software(flash_attention=1)).compute_s
    v2 = _step(profile).compute_s
    assert v1 - v2 == pytest.approx(kernel, rel=1e-9)


def test_dropout_and_xpos_move_the_bytes_worked_out_by_hand(a800):
    """At 1 TB/s for element-wise kernels (no launch cost): dropout's 1-byte masks beside the two
    residual adds are 2·h bytes per token and layer forward and twice that backward; xPos's scale
    on Q and K reads and writes 2·(h + h) 2-byte elements per token forward, twice that backward."""
    profile = _synthetic(a800, membw_gbps=1000.0)
    l, h, tokens = SMALL.layers, SMALL.hidden, SMALL.seq
    plain = _step(profile).compute_s
    dropout = _step(profile, Software(dropout=0.1)).compute_s - plain
    assert dropout == pytest.approx(l * tokens * (2 * h) * (1 + 2) / 1e12, rel=1e-9)
    xpos = _step(profile, model=replace(SMALL, position="xpos")).compute_s - plain
    assert xpos == pytest.approx(l * tokens * (2 * (h + h) * 2) * (1 + 2) / 1e12, rel=1e-9)


def test_gradient_reduction_after_the_backward_is_all_exposed_by_hand(a800):
    """Megatron's distributed optimizer before --overlap-grad-reduce and --overlap-param-gather: over dp = 2
    in a node at 100 GB/s bus bandwidth, reduce-scatter the fp32 gradients ((n−1)/n · 4 B per parameter) and
    all-gather the bf16 weights ((n−1)/n · 2 B): 3 B per parameter, none of it hidden."""
    profile = _synthetic(a800)
    params = SMALL.params()
    before = Software(overlap_grad_reduce=False, overlap_param_gather=False)
    exposed = _step(profile, before, dp=2, zero=1).dp_comm_s
    assert exposed == pytest.approx(params * 0.5 * (4 + 2) / 100e9, rel=1e-9)
    # Each overlap (the reduction under the backward, the gather under the next forward) hides some.
    gather_hidden = _step(profile, Software(overlap_grad_reduce=False), dp=2, zero=1).dp_comm_s
    assert gather_hidden < exposed and _step(profile, dp=2, zero=1).dp_comm_s < gather_hidden


def test_bubble_shrinks_with_interleaving(flm101b, a800_192, flm_layout, a800):
    plain = estimate_step(flm101b, a800_192, flm_layout, a800).breakdown.bubble_s
    inter = estimate_step(flm101b, a800_192, flm_layout.with_(interleave=4), a800).breakdown.bubble_s
    # (p−1)/v stage-times: a quarter with v = 4.
    assert inter == pytest.approx(plain / 4, rel=1e-9)


def test_recompute_costs_time(flm101b, a800_192, flm_layout, a800):
    t = {rc: estimate_step(flm101b, a800_192, flm_layout.with_(recompute=rc, attention="unfused"), a800).iteration_s
         for rc in ("none", "selective", "full")}
    assert t["none"] < t["selective"] < t["full"]


def test_sequence_parallel_splits_elementwise_work(flm101b, a800_192, flm_layout, a800):
    sp = estimate_step(flm101b, a800_192, flm_layout, a800).breakdown.compute_s
    no = estimate_step(flm101b, a800_192, flm_layout.with_(sequence_parallel=False), a800).breakdown.compute_s
    assert sp < no


def test_slower_nvlink_means_more_tp_time(flm101b, flm_layout):
    a100 = builtin_profile("a100-80gb")
    a800 = builtin_profile("a800-80gb")
    c100 = ClusterSpec(gpu=get_gpu("a100-80gb"), gpus=192)
    c800 = ClusterSpec(gpu=get_gpu("a800-80gb"), gpus=192)
    assert (estimate_step(flm101b, c800, flm_layout, a800).breakdown.tp_comm_s
            > estimate_step(flm101b, c100, flm_layout, a100).breakdown.tp_comm_s)


def test_search_fills_nulls_and_respects_fixed_fields(flm101b, a800_192, a800):
    r = search_layout(flm101b, a800_192, PartialLayout(global_batch=2160, tp=4, pp=4), a800)
    assert (r.best.layout.tp, r.best.layout.pp, r.best.layout.dp) == (4, 4, 12)
    assert r.best.fits and r.considered > 10


def test_full_search_picks_a_fitting_fast_layout(flm101b, a800_192, a800):
    r = search_layout(flm101b, a800_192, PartialLayout(global_batch=2160), a800)
    assert r.best.fits
    assert r.rejected["memory"] > 0
    # Nothing that fits is faster than the chosen one among a few hand-picked layouts.
    for tp, pp in ((8, 4), (4, 8), (8, 8)):
        other = search_layout(flm101b, a800_192, PartialLayout(global_batch=2160, tp=tp, pp=pp), a800)
        assert other.best.iteration_s >= r.best.iteration_s


def test_tensor_parallel_host_overhead_by_hand(a800):
    """The profiler's measured host time around a tensor-parallel layer pass (DTensor dispatch)
    adds on a CPU once per forward and backward pass of every layer of every micro-batch (and per
    recomputed forward); on a GPU it is issue time, which shows only when the host is the
    bottleneck."""
    plain = _synthetic(a800)
    measured = {**plain.collectives, "tensor_parallel": {"layer_pass_overhead_s": 0.01,
                                                          "sequence_parallel_layer_pass_overhead_s": 0.03,
                                                          "micro_batch_overhead_s": 0.1,
                                                          "sequence_parallel_micro_batch_overhead_s": 0.2,
                                                          "selective_recompute_layer_overhead_s": 0.005,
                                                          "sequence_parallel_selective_recompute_layer_overhead_s":
                                                              0.007}}
    cluster = ClusterSpec(gpu=get_gpu("a800-80gb"), gpus=2)

    def step(profile, **layout):
        lay = Layout(tp=2, pp=1, dp=1, micro_batch=1, global_batch=3, **layout)
        return estimate_step(SMALL, cluster, lay, profile).breakdown

    cpu, cpu_plain = (replace(p, device={**a800.device, "kind": "cpu"}) for p in (replace(plain, collectives=measured),
                                                                                   plain))
    passes = 3 * SMALL.layers * 2                      # micro-batches × layers × (forward, backward)
    assert step(cpu).tp_comm_s - step(cpu_plain).tp_comm_s == pytest.approx(passes * 0.01 + 3 * 0.1)
    assert (step(cpu, sequence_parallel=True).tp_comm_s - step(cpu_plain, sequence_parallel=True).tp_comm_s
            == pytest.approx(passes * 0.03 + 3 * 0.2))
    # A recomputed forward pays it again; a selective one also its checkpoint's dispatch, per layer.
    for recompute, selective in (("full", 0.0), ("selective", 0.005)):
        assert (step(cpu, recompute=recompute).tp_comm_s - step(cpu_plain, recompute=recompute).tp_comm_s
                == pytest.approx(3 * SMALL.layers * (3 * 0.01 + selective) + 3 * 0.1))
    assert (step(cpu, recompute="selective", sequence_parallel=True).tp_comm_s
            - step(cpu_plain, recompute="selective", sequence_parallel=True).tp_comm_s
            == pytest.approx(3 * SMALL.layers * (3 * 0.03 + 0.007) + 3 * 0.2))
    def on_gpu(overhead_s: float):
        return replace(plain, collectives={**plain.collectives,
                                           "tensor_parallel": {"layer_pass_overhead_s": overhead_s}})

    hidden = on_gpu(1e-6)                      # less than a pass's kernels: hidden under them
    assert step(hidden).tp_comm_s == step(plain).tp_comm_s
    assert step(hidden).compute_s == pytest.approx(step(plain).compute_s)
    assert step(on_gpu(10.0)).compute_s >= passes * 10.0                      # the host is the bottleneck


PROBE = {"hidden": 128, "heads": 8, "seq": 64, "micro_batch": 2, "vocab": 256, "ranks": 2}


def test_host_times_are_what_the_model_leaves_of_the_probe(a800):
    """With the probe's times in the profile, the host times per layer pass and per micro-batch of
    any model (the unsharded twin), and beyond them per layer pass, per micro-batch and per
    selectively recomputed layer (tensor parallelism), and per layer pass and micro-batch (FSDP),
    are what the cost model does not charge of them: built
    here as the model's own charge for the probe plus known host times, they come back, and the
    probe's steps are then predicted at their measured times. The probe's ranks computed on one core
    each and the profile's kernels on two: the model's charge for the probe is at one core."""
    from planner.cost.device import core_sharing
    from planner.plan.validation import RunRecord, shared_cores

    cpu = replace(_synthetic(a800, membw_gbps=50.0), device={**a800.device, "kind": "cpu"}, software={"threads": 2})
    # The profile as the probe's ranks ran it: kernels at one core of two, the host's own time as it is.
    probed = replace(cpu, calibration={"time_factors": core_sharing(cpu, 1.0)})
    assert (probed.time_factors()["gemm"], probed.time_factors()["host"]) == (2.0, 1.0)
    cluster = ClusterSpec(gpu=get_gpu("a800-80gb"), gpus=2)

    def probe_step(profile, layers: int, sp: bool, recompute: str = "none") -> float:
        model = ModelSpec(layers=layers, hidden=128, heads=8, ffn=512, vocab=256, seq=64)
        lay = Layout(tp=2, pp=1, dp=1, micro_batch=2, global_batch=2, sequence_parallel=sp, recompute=recompute)
        b = estimate_step(model, cluster, lay, profile).breakdown
        return b.total_s - b.optimizer_s

    def twin_step(profile, layers: int) -> float:
        model = ModelSpec(layers=layers, hidden=128, heads=8, ffn=512, vocab=256, seq=64)
        b = estimate_step(model, cluster, Layout(tp=1, pp=1, dp=1, micro_batch=2, global_batch=2), profile).breakdown
        return b.total_s - b.optimizer_s

    twin_pass, twin_ends = 0.001, 0.005     # any model's host time, per layer pass and per micro-batch
    host = {False: (0.004, 0.010, 0.003), True: (0.006, 0.020, 0.005)}     # pass, micro-batch, selective
    probe = {**PROBE, "rank_cores": 1.0}
    for sp, kind in ((False, "plain"), (True, "sequence_parallel")):
        pass_s, ends, selective = host[sp]
        layer = (probe_step(probed, 3, sp) - probe_step(probed, 1, sp)) / 2 + 2 * twin_pass
        selective_layer = ((probe_step(probed, 3, sp, "selective") - probe_step(probed, 1, sp, "selective")) / 2
                           + 2 * twin_pass)
        probe[kind] = {"sharded_layer_s": layer + 2 * pass_s,
                       "tensor_parallel_1_layers_s": probe_step(probed, 1, sp) + twin_ends + 2 * twin_pass + ends
                       + 2 * pass_s,
                       "selective_recompute_sharded_layer_s": selective_layer + 3 * pass_s + selective}
    probe["plain"].update({f"unsharded_{n}_layers_s": twin_step(probed, n) + twin_ends + 2 * n * twin_pass
                           for n in (1, 3)})
    # FSDP over the two ranks (zero 3): per layer pass and per micro-batch.
    def fsdp_step(profile, layers: int) -> float:
        model = ModelSpec(layers=layers, hidden=128, heads=8, ffn=512, vocab=256, seq=64)
        lay = Layout(tp=1, pp=1, dp=2, micro_batch=2, global_batch=4, zero=3)
        b = estimate_step(model, cluster, lay, profile).breakdown
        return b.total_s - b.optimizer_s

    probe["plain"].update(
        fully_sharded_layer_s=(fsdp_step(probed, 3) - fsdp_step(probed, 1)) / 2 + 2 * twin_pass + 2 * 0.007,
        fully_sharded_1_layers_s=fsdp_step(probed, 1) + twin_ends + 2 * twin_pass + 0.012 + 2 * 0.007)
    measured = replace(cpu, collectives={**cpu.collectives, "tensor_parallel": {"probe": probe}})
    tp = probe_residuals(measured).collectives["tensor_parallel"]
    assert (tp["unsharded_layer_pass_overhead_s"], tp["unsharded_micro_batch_overhead_s"]) == pytest.approx(
        (twin_pass, twin_ends))
    assert (tp["fully_sharded_layer_pass_overhead_s"], tp["fully_sharded_micro_batch_overhead_s"]) == pytest.approx(
        (0.007, 0.012))
    # The measured profile as a run of the probe's shape sees it: two one-thread ranks on two cores.
    measured = shared_cores(RunRecord(folder=Path("run"), steps=[], start={
        "device_kind": "cpu", "cores": 2, "threads": 1, "processes": 2}), measured)
    assert fsdp_step(measured, 3) == pytest.approx(probe["plain"]["fully_sharded_1_layers_s"]
                                                   + 2 * probe["plain"]["fully_sharded_layer_s"])
    assert twin_step(measured, 3) == pytest.approx(probe["plain"]["unsharded_3_layers_s"])
    for sp, key in ((False, ""), (True, "sequence_parallel_")):
        assert (tp[f"{key}layer_pass_overhead_s"], tp[f"{key}micro_batch_overhead_s"],
                tp[f"{key}selective_recompute_layer_overhead_s"]) == pytest.approx(host[sp])
        kind = probe["sequence_parallel" if sp else "plain"]
        assert probe_step(measured, 1, sp) == pytest.approx(kind["tensor_parallel_1_layers_s"])
        assert probe_step(measured, 3, sp) == pytest.approx(kind["tensor_parallel_1_layers_s"]
                                                            + 2 * kind["sharded_layer_s"])
    assert probe_residuals(cpu) is cpu           # no probe: the profile as it is


def test_fsdp_host_time_by_hand(a800):
    """FSDP's measured host time adds on a CPU once per forward and backward pass of every layer and
    once per micro-batch, to the data-parallel time, under zero 3 only; on a GPU it is issue time."""
    plain = _synthetic(a800)
    measured = {**plain.collectives, "tensor_parallel": {"fully_sharded_layer_pass_overhead_s": 0.01,
                                                          "fully_sharded_micro_batch_overhead_s": 0.1}}
    cpu, cpu_plain = (replace(p, device={**a800.device, "kind": "cpu"})
                      for p in (replace(plain, collectives=measured), plain))

    def step(profile, zero: int):
        lay = Layout(tp=1, pp=1, dp=2, micro_batch=1, global_batch=6, zero=zero)
        return estimate_step(SMALL, ClusterSpec(gpu=get_gpu("a800-80gb"), gpus=2), lay, profile).breakdown

    assert step(cpu, 3).dp_comm_s - step(cpu_plain, 3).dp_comm_s == pytest.approx(3 * (SMALL.layers * 2 * 0.01 + 0.1))
    assert step(cpu, 1).dp_comm_s == step(cpu_plain, 1).dp_comm_s
    on_gpu = replace(plain, collectives={**plain.collectives, "tensor_parallel": {
        "fully_sharded_layer_pass_overhead_s": 10.0}})
    assert step(on_gpu, 3).compute_s >= 3 * SMALL.layers * 2 * 10.0        # the host is the bottleneck


def test_any_models_host_time_by_hand(a800):
    """The host's time around any model's kernels (the probe's unsharded twin) adds on a CPU once per
    forward and backward pass of every layer, once more per layer re-run by full recompute, and once
    per micro-batch; on a GPU it is issue time, which the kernels' own launches stand for."""
    plain = _synthetic(a800)
    measured = {**plain.collectives, "tensor_parallel": {"unsharded_layer_pass_overhead_s": 0.01,
                                                          "unsharded_micro_batch_overhead_s": 0.1}}
    cpu, cpu_plain = (replace(p, device={**a800.device, "kind": "cpu"})
                      for p in (replace(plain, collectives=measured), plain))

    def step(profile, recompute: str = "none"):
        lay = Layout(tp=1, pp=1, dp=1, micro_batch=1, global_batch=3, recompute=recompute)
        return estimate_step(SMALL, ClusterSpec(gpu=get_gpu("a800-80gb"), gpus=1), lay, profile).breakdown

    assert step(cpu).compute_s - step(cpu_plain).compute_s == pytest.approx(3 * (SMALL.layers * 2 * 0.01 + 0.1))
    assert step(cpu, "full").recompute_s - step(cpu_plain, "full").recompute_s == pytest.approx(3 * SMALL.layers * 0.01)
    assert step(replace(plain, collectives=measured)) == step(plain)


def test_optimizer_step_host_time_by_hand(a800):
    """On a CPU the step after the backward is AdamW's bytes plus the host time the profiler
    measured per layer and per model chunk, less the probe's own bytes; sharded (DTensor) figures
    under tensor or sharded data parallelism, whole-tensor ones otherwise. On a GPU, bytes only."""
    membw = 50.0
    base = _synthetic(a800, membw_gbps=membw)
    optimizer = {"sharded_layer_s": 0.002, "sharded_fixed_s": 0.003, "unsharded_layer_s": 0.001,
                 "unsharded_fixed_s": 0.0015, "layer_params": 200_000, "fixed_params": 30_000}
    measured = replace(base, collectives={**base.collectives,
                                          "tensor_parallel": {"optimizer": optimizer, "probe": {"ranks": 2}}})
    cpu = replace(measured, device={**a800.device, "kind": "cpu"})

    def seconds(params: float) -> float:                         # 30 bytes a parameter through memory
        return params * 30 / (membw * 1e9)

    for layout, kind, shards in (({}, "unsharded", 1), ({"tp": 2}, "sharded", 2), ({"dp": 2, "zero": 1}, "sharded", 2),
                                 ({"dp": 2, "zero": 0}, "unsharded", 1)):
        gpus = layout.get("tp", 1) * layout.get("dp", 1)
        lay = Layout(**{"tp": 1, "pp": 1, "dp": 1, "micro_batch": 1, "global_batch": layout.get("dp", 1), **layout})
        est = estimate_step(SMALL, ClusterSpec(gpu=get_gpu("a800-80gb"), gpus=gpus), lay, cpu)
        opt_params = stage_params(SMALL, lay) / (lay.dp if lay.zero >= 1 else 1)
        host_layer = optimizer[f"{kind}_layer_s"] - seconds(optimizer["layer_params"] / shards)
        host_fixed = optimizer[f"{kind}_fixed_s"] - seconds(optimizer["fixed_params"] / shards)
        assert est.breakdown.optimizer_s == pytest.approx(seconds(opt_params) + SMALL.layers * host_layer
                                                          + host_fixed), layout
    gpu = estimate_step(SMALL, ClusterSpec(gpu=get_gpu("a800-80gb"), gpus=2),
                        Layout(tp=2, pp=1, dp=1, micro_batch=1, global_batch=1), measured)
    assert gpu.breakdown.optimizer_s == pytest.approx(seconds(stage_params(SMALL, gpu.layout)))


def test_a_failed_probe_charges_what_no_probe_does(a800):
    """When the profiler's tensor-parallel probe fails, its entry says why and holds no figure: a CPU
    step is then charged exactly as with no probe at all (AdamW's bytes and launches, no host time),
    not a measured host time of zero."""
    from profiles.collectives import tensor_parallel_entry

    base = _synthetic(a800, membw_gbps=50.0)
    cpu = replace(base, device={**a800.device, "kind": "cpu"},            # launches to charge: 20 µs each
                  memory_bound={**base.memory_bound, "overhead_us": 20.0})
    failed = replace(cpu, collectives={**cpu.collectives, "tensor_parallel": tensor_parallel_entry(
        None, "RuntimeError: gloo timed out", 2, 1.0)})
    assert failed.collectives["tensor_parallel"]["probe"]["plain"] == {"error": "RuntimeError: gloo timed out"}
    cluster = ClusterSpec(gpu=get_gpu("a800-80gb"), gpus=2)
    for layout in ({"tp": 2}, {"tp": 2, "sequence_parallel": True}, {"dp": 2, "zero": 3}, {"dp": 2, "zero": 0}):
        lay = Layout(**{"tp": 1, "pp": 1, "dp": 1, "micro_batch": 1, "global_batch": layout.get("dp", 1), **layout})
        got, without = (estimate_step(SMALL, cluster, lay, p).breakdown for p in (failed, cpu))
        assert got == without, layout
        assert got.optimizer_s > 0


def test_tensor_parallel_collectives_by_hand(a800):
    """Per layer pass: two all-reduces of the activations, or under sequence parallelism two
    all-gathers and two reduce-scatters (Korthikanti et al. 2022, §4.2.2), each op at its own
    measured bus bandwidth where the profile has one; a full recompute re-runs them all, a
    selective one only the all-gathers (runtime/model/decoder.py _saved_ops). Under sequence parallelism
    the LayerNorms' fp32 gradients (2 per layer and the final one, weight and bias) are summed once
    a step in one all-reduce."""
    plain = _synthetic(a800)
    ops = {"all_gather": {"busbw_gbps": 50.0, "latency_us": 0.0},
           "reduce_scatter": {"busbw_gbps": 25.0, "latency_us": 0.0}}
    profile = replace(plain, collectives={**plain.collectives, "intra_node": {**plain.collectives["intra_node"],
                                                                              "ops": ops}})
    cluster = ClusterSpec(gpu=get_gpu("a800-80gb"), gpus=2)

    def tp_comm(**layout) -> float:
        lay = Layout(tp=2, pp=1, dp=1, micro_batch=1, global_batch=3, **layout)
        return estimate_step(SMALL, cluster, lay, profile).breakdown.tp_comm_s

    activations = SMALL.seq * SMALL.hidden * 2                          # one micro-batch, bf16
    passes = 3 * SMALL.layers * 2                                       # micro-batches × layers × (fwd, bwd)
    all_reduce = 2 * (2 - 1) / 2 * activations / 100e9                  # ring: 2(n−1)/n of the buffer
    gather, scatter = (2 - 1) / 2 * activations / 50e9, (2 - 1) / 2 * activations / 25e9
    layernorms = (2 * SMALL.layers + 1) * 2 * SMALL.hidden * 4
    sync = 2 * (2 - 1) / 2 * layernorms / 100e9
    assert tp_comm() == pytest.approx(passes * 2 * all_reduce)
    assert tp_comm(sequence_parallel=True) == pytest.approx(passes * 2 * (gather + scatter) + sync)
    assert (tp_comm(sequence_parallel=True, recompute="selective")
            == pytest.approx(passes * 2 * (gather + scatter) + passes / 2 * 2 * gather + sync))
    assert tp_comm(sequence_parallel=True, recompute="full") == pytest.approx(
        passes * 1.5 * 2 * (gather + scatter) + sync)


def test_a_stated_bf16_gradient_reduction_is_charged_half_the_bytes():
    """llm-foundry's pure-bf16 runs (FSDP PURE) reduce gradients in bf16; the cost model charges what
    the case states, and refuses a size that is neither bf16 nor fp32."""
    import dataclasses

    import pytest

    from planner.errors import FlmplanError
    from planner.layout.case import published_cases
    from planner.layout.search import estimate_case
    from planner.model.specs import Software

    case = next(c for c in published_cases() if c.name == "llmfoundry-70b-s2048-32xa100-80gb")
    assert case.software_spec().grad_reduce_bytes == 2           # stated in cases.json, from the source
    stated = estimate_case(case).best.breakdown.dp_comm_s
    fp32 = case.model_copy(update={"software": case.software.model_copy(update={"grad_reduce_bytes": 4})})
    assert estimate_case(fp32).best.breakdown.dp_comm_s > stated > 0
    with pytest.raises(FlmplanError, match="grad_reduce_bytes must be 2 or 4"):
        dataclasses.replace(Software(), grad_reduce_bytes=3)


def test_the_ends_counted_in_the_pipeline_split_admit_llama3s_chunking():
    """Llama 3 405B's 126 layers on 16 stages: 8 chunks per stage need 128 slots, which only the
    embedding and the output layer counted as a layer each provide (the paper's §3.3.2); the first and
    last stages then hold 7 layers, the others 8, and the search takes that chunking."""
    from planner.errors import InvalidLayout
    from planner.layout.case import published_cases
    from planner.layout.search import estimate_case
    from planner.model.specs import stage_layers, validate_layout

    case = next(c for c in published_cases() if c.name == "llama3-405b-s8192-16384xh100-80gb")
    lay = estimate_case(case).best.layout
    assert lay.ends_in_split and lay.interleave == 8
    assert stage_layers(126, lay) == [7] + [8] * 14 + [7]
    with pytest.raises(InvalidLayout, match="128 layer chunks"):
        validate_layout(case.model_spec(), case.cluster_spec(), lay.with_(ends_in_split=False))
