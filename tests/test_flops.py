"""FLOPs against hand-worked values of Narayanan et al. 2021, eq. 3."""

import pytest

from planner.model.flops import hardware_flops_per_token, model_flops_per_token, step_flops
from planner.model.specs import ModelSpec


def test_model_flops_match_narayanan_eq3_without_recompute(flm101b):
    l, h, s, v = 80, 10240, 2048, 100352
    # 72·B·s·l·h²·(1 + s/(6h) + V/(12·l·h)) per step, i.e. per token without B·s.
    expected = 72 * l * h * h * (1 + s / (6 * h) + v / (12 * l * h))
    assert model_flops_per_token(flm101b) == pytest.approx(expected, rel=1e-12)


def test_full_recompute_is_narayanan_eq3(flm101b):
    l, h, s, v = 80, 10240, 2048, 100352
    expected = 96 * l * h * h * (1 + s / (6 * h) + v / (16 * l * h))
    assert hardware_flops_per_token(flm101b, "full") == pytest.approx(expected, rel=1e-12)


def test_selective_recompute_adds_only_the_attention_core(flm101b):
    # One more forward of QKᵀ and ·V per layer: 4·s·h per token and layer.
    extra = hardware_flops_per_token(flm101b, "selective") - hardware_flops_per_token(flm101b, "none")
    assert extra == pytest.approx(80 * 4 * 2048 * 10240)


def test_gqa_and_swiglu_by_hand():
    m = ModelSpec(layers=1, hidden=8, heads=4, kv_heads=2, ffn=12, vocab=10, seq=4, activation="swiglu")
    # kv_dim = 2 heads × 2 = 4. QKV: 2·8·(8+2·4) = 256; out: 2·8·8 = 128; SwiGLU: 2·3·8·12 = 576;
    # attention: 4·4·8 = 128; logits: 2·8·10 = 160. Forward 1248; ×3 = 3744.
    assert model_flops_per_token(m) == 3744


def test_step_flops_by_hand():
    m = ModelSpec(layers=1, hidden=8, heads=4, ffn=32, vocab=10, seq=4)
    # Per token, forward: QKV 2·8·24 = 384; out 2·8·8 = 128; MLP 2·2·8·32 = 1024; attention
    # 4·4·8 = 128; logits 2·8·10 = 160; total 1824. Model FLOPs ×3 = 5472 per token; a batch of 3
    # sequences of 4 is 12 tokens: 65664. Full recompute runs the layer's forward again:
    # (384 + 128 + 1024 + 128)·12 = 19968 more, 85632.
    assert step_flops(m, global_batch=3, recompute="full") == (65664, 85632)


def test_learned_positions_have_no_kernel_in_the_layer_and_a_table_beside_the_embedding():
    """Learned absolute positions are added once to the embeddings: the layer loses rotary's 14
    kernels (25 → 11 forward, 50 → 22 backward, by hand: 4 GEMMs, attention, 2 LayerNorms, 2 residual
    adds, the GeLU and attention's output copy) and its traffic; the model gains seq × hidden
    parameters."""
    from dataclasses import replace

    from planner.cost.compute import layer_kernels
    from planner.model import anatomy

    rope = ModelSpec(layers=2, hidden=256, heads=4, ffn=1024, vocab=1000, seq=128)
    gpt = replace(rope, position="learned")
    assert [op.name for op in anatomy.elementwise_ops(gpt)] == ["layernorm", "residual_add", "gelu"]
    assert layer_kernels(gpt) == (11, 22)
    assert gpt.params() - rope.params() == 128 * 256
