"""Specs: parameter counts, the GPU catalog, and every invalid-layout message."""

import pytest

from planner.errors import FlmplanError, InvalidLayout
from planner.model.specs import ClusterSpec, Layout, ModelSpec, get_gpu, gpu_catalog, validate_layout


def test_flm101b_parameter_count(flm101b):
    # ANCHORS: ≈101.7B with tied embeddings; 80 layers × (12h² + 13h) + V·h + 2h.
    h = 10240
    per_layer = 12 * h * h + 13 * h
    assert flm101b.layer_params() == per_layer
    assert flm101b.params() == 80 * per_layer + 100352 * h + 2 * h
    assert flm101b.params() / 1e9 == pytest.approx(101.7, abs=0.05)


def test_untied_embeddings_add_the_output_head(flm101b):
    untied = ModelSpec(**{**flm101b.to_dict(), "tied_embeddings": False})
    assert untied.params() - flm101b.params() == 100352 * 10240


def test_gqa_and_swiglu_parameter_count():
    # Llama-2-70B-like: 64 heads, 8 KV heads of 128, SwiGLU FFN 28672 (3 matrices).
    m = ModelSpec(layers=80, hidden=8192, heads=64, kv_heads=8, ffn=28672, vocab=32000, seq=4096,
                  activation="swiglu", tied_embeddings=False)
    assert m.kv_dim == 1024
    weights = 8192 * (8192 + 2 * 1024) + 8192 * 8192 + 3 * 8192 * 28672
    assert m.layer_params() - weights == (8192 + 2 * 1024) + 8192 + 2 * 28672 + 8192 + 4 * 8192
    assert m.params() / 1e9 == pytest.approx(69.0, abs=0.3)


def test_catalog_has_the_required_gpus_with_dated_prices():
    catalog = gpu_catalog()
    for key in ("a100-40gb", "a100-80gb", "a800-80gb", "h100-80gb", "h200-141gb", "b200"):
        g = catalog[key]
        assert g.peak_tflops_bf16 > 0 and g.memory_gib > 0 and g.hbm_tbps > 0
        assert g.price.usd_per_gpu_hour > 0 and g.price.date and g.price.source
    assert catalog["h100-80gb"].peak_tflops_bf16 == 989
    assert catalog["a800-80gb"].nvlink_gbps < catalog["a100-80gb"].nvlink_gbps


def test_unknown_gpu_is_named():
    with pytest.raises(FlmplanError, match="Unknown GPU 'v100'"):
        get_gpu("v100")


def test_model_shape_errors():
    with pytest.raises(FlmplanError, match="model.heads = 7 must divide model.hidden"):
        ModelSpec(layers=2, hidden=64, heads=7, ffn=256, vocab=100, seq=16)
    with pytest.raises(FlmplanError, match="model.kv_heads = 3"):
        ModelSpec(layers=2, hidden=64, heads=8, kv_heads=3, ffn=256, vocab=100, seq=16)
    with pytest.raises(FlmplanError, match="model.layers must be a positive"):
        ModelSpec(layers=0, hidden=64, heads=8, ffn=256, vocab=100, seq=16)


def test_cluster_must_be_whole_nodes():
    with pytest.raises(FlmplanError, match="not a whole number of nodes"):
        ClusterSpec(gpu=get_gpu("a800-80gb"), gpus=12)


GOOD = dict(tp=4, pp=4, dp=12, micro_batch=1, global_batch=2160)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(tp=3, dp=16), "tp = 3 does not divide the 80 attention heads"),
        (dict(dp=11), r"tp·pp·dp = 4·4·11 = 176 ≠ 192 GPUs"),
        (dict(global_batch=2161), "global_batch = 2161 is not divisible by micro_batch·dp = 1·12"),
        (dict(tp=16, dp=3), "tp = 16 is larger than a node"),
        (dict(micro_batch=0), "micro_batch must be at least 1"),
        (dict(interleave=2, pp=1, dp=48), "interleave > 1 needs pipeline parallelism"),
        (dict(interleave=40), "interleave = 40 with pp = 4 needs 160 layer chunks"),
        (dict(zero=3), "zero = 3 .* not combined with pp > 1"),
        (dict(zero=5), "zero must be 0, 1, 2 or 3"),
        (dict(recompute="some"), "recompute must be none, selective or full"),
        (dict(tp=1, dp=48, sequence_parallel=True), "sequence_parallel needs tp ≥ 2"),
    ],
)
def test_invalid_layouts_are_refused_by_field(flm101b, a800_192, changes, message):
    with pytest.raises(InvalidLayout, match=message):
        validate_layout(flm101b, a800_192, Layout(**{**GOOD, **changes}))


def test_pp_larger_than_layers_and_kv_heads():
    small = ModelSpec(layers=2, hidden=64, heads=8, kv_heads=2, ffn=256, vocab=100, seq=16)
    cluster = ClusterSpec(gpu=get_gpu("h100-80gb"), gpus=8)
    with pytest.raises(InvalidLayout, match="pp = 4 is larger than the 2 layers"):
        validate_layout(small, cluster, Layout(tp=1, pp=4, dp=2, micro_batch=1, global_batch=8))
    with pytest.raises(InvalidLayout, match="does not divide the 2 key/value heads"):
        validate_layout(small, cluster, Layout(tp=4, pp=1, dp=2, micro_batch=1, global_batch=8))
