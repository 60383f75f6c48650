"""FLOPs against hand-worked values of Narayanan et al. 2021, eq. 3."""

import pytest

from planner.flops import hardware_flops_per_token, model_flops_per_token, step_flops
from planner.specs import ModelSpec


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


def test_step_flops_scale_with_tokens(flm101b):
    mf, hf = step_flops(flm101b, global_batch=2160, recompute="full")
    assert mf == pytest.approx(2160 * 2048 * model_flops_per_token(flm101b))
    assert hf / mf == pytest.approx(hardware_flops_per_token(flm101b, "full") / model_flops_per_token(flm101b))
