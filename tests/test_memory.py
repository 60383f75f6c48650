"""Memory per GPU against Korthikanti et al. 2022 and the published layouts."""

import pytest

from planner.cost.device_profile import builtin_profile
from planner.errors import Infeasible
from planner.layout.candidates import PartialLayout
from planner.layout.case import published_cases
from planner.layout.search import search_layout
from planner.model.memory import activation_bytes_per_layer, memory_per_gpu, micro_batches_in_flight
from planner.model.specs import ClusterSpec, Layout, get_gpu


def _layout(**kw) -> Layout:
    base = dict(tp=1, pp=1, dp=1, micro_batch=1, global_batch=1, attention="unfused")
    return Layout(**{**base, **kw})


def test_activations_korthikanti_eq(gpt_small):
    s, b, h, a = 2048, 1, 2048, 16
    sbh = s * b * h
    # No parallelism: sbh·(34 + 5·a·s/h) bytes (Korthikanti et al. 2022, eq. 1).
    assert activation_bytes_per_layer(gpt_small, _layout()) == pytest.approx(sbh * (34 + 5 * a * s / h))
    # Tensor parallel t = 4: sbh·(10 + 24/t + 5as/(ht)) (eq. 2).
    t = 4
    got = activation_bytes_per_layer(gpt_small, _layout(tp=t))
    assert got == pytest.approx(sbh * (10 + 24 / t + 5 * a * s / (h * t)))
    # + sequence parallel: sbh/t·(34 + 5as/h) (eq. 4).
    got = activation_bytes_per_layer(gpt_small, _layout(tp=t, sequence_parallel=True))
    assert got == pytest.approx(sbh / t * (34 + 5 * a * s / h))
    # Selective recompute with SP: 34·sbh/t (eq. 5); full: 2sbh/t.
    got = activation_bytes_per_layer(gpt_small, _layout(tp=t, sequence_parallel=True, recompute="selective"))
    assert got == pytest.approx(34 * sbh / t)
    got = activation_bytes_per_layer(gpt_small, _layout(tp=t, sequence_parallel=True, recompute="full"))
    assert got == pytest.approx(2 * sbh / t)


def test_in_flight_micro_batches():
    assert micro_batches_in_flight(_layout(pp=4, global_batch=16)) == 4
    # Interleaved: p·(1 + (p−1)/(p·v)) = 4·(1 + 3/8) = 5.5.
    assert micro_batches_in_flight(_layout(pp=4, interleave=2, global_batch=16)) == pytest.approx(5.5)
    # Never more than the micro-batches there are.
    assert micro_batches_in_flight(_layout(pp=4, global_batch=2)) == 2


def test_model_states_by_zero_stage(flm101b):
    base = dict(tp=8, pp=1, dp=24, micro_batch=1, global_batch=24, recompute="full")
    m0 = memory_per_gpu(flm101b, Layout(**base, zero=0))
    m1 = memory_per_gpu(flm101b, Layout(**base, zero=1))
    m3 = memory_per_gpu(flm101b, Layout(**base, zero=3))
    assert m1.optimizer_gib == pytest.approx(m0.optimizer_gib / 24)
    assert m1.grads_gib == m0.grads_gib
    assert m3.grads_gib == pytest.approx(m0.grads_gib / 24)
    # 18 bytes per parameter without sharding: 2 (bf16 weights) + 4 (fp32 gradients) + 12 (fp32 master, Adam m, v).
    params = flm101b.params() / 8
    assert (m0.weights_gib + m0.grads_gib + m0.optimizer_gib) * 2**30 == pytest.approx(params * 18, rel=1e-3)


def test_published_layouts_fit_the_gpus_they_ran_on():
    """Every published run ran, so its published layout — with the least memory-hungry choice for
    each field it does not state (one sequence per micro-batch, full recompute, no interleaving,
    sharded optimizer) — must fit its GPU. The search is not involved: it only returns fits."""
    leanest = {"micro_batch": 1, "recompute": "full", "interleave": 1, "zero": 1}
    checked = 0
    for case in published_cases():
        part = case.partial_layout()
        if None in (part.tp, part.pp, part.dp):
            continue
        given = {k: v for k, v in case.parallel.model_dump().items() if v is not None}
        layout = Layout(**{**leanest, "sequence_parallel": part.tp > 1, **given}, attention=part.attention)
        gib = memory_per_gpu(case.model_spec(), layout).total_gib
        assert gib <= case.cluster_spec().gpu.memory_gib, (case.name, gib)
        checked += 1
    assert checked >= 10


def test_101b_without_model_parallelism_is_refused_with_the_figure(flm101b):
    cluster = ClusterSpec(gpu=get_gpu("a800-80gb"), gpus=192)
    profile = builtin_profile("a800-80gb")
    # Megatron-style (weights replicated over data parallelism, zero ≤ 2): 203 GB of bf16 weights alone.
    part = PartialLayout(global_batch=2304, tp=1, pp=1, zero=1)
    with pytest.raises(Infeasible, match=r"No layout fits in 80 GiB per GPU: the smallest needs \d+\.\d GiB"):
        search_layout(flm101b, cluster, part, profile)
    # Fully sharded (FSDP, zero 3) over 192 GPUs it does fit: 18 bytes × 101.7B / 192 ≈ 9 GiB of states.
    assert search_layout(flm101b, cluster, PartialLayout(global_batch=2304, tp=1, pp=1), profile).best.fits
