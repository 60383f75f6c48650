"""µP (runtime/model/mup.py): the multipliers of each parameter group against hand-computed values, and
growth under µP keeping the function while the grown model takes its own width's rates."""

import math

import pytest
import torch

from runtime.growth.msg import grow_decoder
from runtime.model import mup
from runtime.model.decoder import Decoder, DecoderConfig
from runtime.parallel.optim import make_optimizer

# width 128 over base 32: width_mult 4.
MUP = DecoderConfig(layers=2, hidden=128, heads=4, ffn=512, vocab=64, seq=16, tied_embeddings=False,
                    mup=True, mup_base_width=32, mup_output_mult=2.0, mup_attn_mult=3.0)


def groups_by_name(model: Decoder) -> dict[str, dict]:
    opt = make_optimizer(model, 1e-3)
    ids = {id(p): n for n, p in model.named_parameters()}
    return {ids[id(p)]: g for g in opt.param_groups for p in g["params"]}


def test_each_parameter_group_gets_the_hand_computed_rate_decay_and_init():
    torch.manual_seed(0)
    model = Decoder(MUP)
    g = groups_by_name(model)
    # Hidden matrices: lr / 4, weight decay 0.1 · 4 (FLM-101B), init std 0.02 / √4.
    for name in ("blocks.0.attn.q.weight", "blocks.1.mlp.up.weight", "blocks.0.attn.o.weight"):
        assert g[name]["lr"] == pytest.approx(1e-3 / 4) and g[name]["lr_mult"] == 0.25
        assert g[name]["weight_decay"] == pytest.approx(0.4)
    # Embedding, biases, LayerNorms: SP's rate, no decay; the untied readout matrix: SP's rate and decay.
    for name in ("embed.weight", "blocks.0.attn.q.bias", "blocks.0.ln1.weight", "ln_f.bias"):
        assert g[name]["lr"] == pytest.approx(1e-3) and g[name]["weight_decay"] == 0.0, name
    assert g["head.weight"]["lr"] == pytest.approx(1e-3) and g["head.weight"]["weight_decay"] == pytest.approx(0.1)
    q = model.blocks["0"].attn.q.weight
    o = model.blocks["0"].attn.o.weight
    assert q.std().item() == pytest.approx(0.02 / 2, rel=0.05)
    assert o.std().item() == pytest.approx(0.02 / math.sqrt(4) / 2, rel=0.05)     # / √(2·layers) / √4
    assert model.embed.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert mup.readout_mult(MUP) == 0.5 and mup.attention_scale(MUP) == pytest.approx(3.0 / 32)


def test_mup_forward_multiplies_the_readout_and_the_attention_logits():
    """The µP model equals the SP model with the readout scaled by output_mult / width_mult, once
    the SP model's attention scale (1/√d) is made µP's (attn_mult / d) by scaling its queries."""
    torch.manual_seed(1)
    m = Decoder(MUP)
    sp_cfg = DecoderConfig(**{**MUP.to_dict(), "mup": False, "mup_base_width": 32, "mup_output_mult": 2.0,
                              "mup_attn_mult": 3.0, "tied_embeddings": False})
    s = Decoder(sp_cfg)
    s.load_state_dict(m.state_dict())
    d = MUP.head_dim
    with torch.no_grad():
        for b in s.blocks.values():       # q·(attn_mult/d)/(1/√d) makes SP's scores µP's
            b.attn.q.weight.mul_(3.0 / d * math.sqrt(d))
            b.attn.q.bias.mul_(3.0 / d * math.sqrt(d))
        tokens = torch.randint(0, 64, (2, 16))
        assert torch.allclose(m(tokens), s(tokens) * 0.5, atol=1e-5)


def test_sp_is_unchanged_by_the_mup_fields():
    sp = DecoderConfig(layers=1, hidden=64, heads=2, ffn=128, vocab=32, seq=8, mup_base_width=16)
    g = groups_by_name(Decoder(sp))
    assert {v["lr_mult"] for v in g.values()} == {1.0}
    assert {v["weight_decay"] for v in g.values()} == {0.0, 0.1}
    assert mup.readout_mult(sp) == 1.0 and mup.attention_scale(sp) == pytest.approx(1 / math.sqrt(32))


@pytest.mark.parametrize("change", [dict(hidden=256, heads=8, ffn=1024), dict(layers=4),
                                    dict(hidden=256, heads=8, ffn=1024, layers=4)], ids=["width", "depth", "both"])
@pytest.mark.parametrize("tied", [True, False])
def test_growth_under_mup_keeps_the_function_and_moves_to_the_new_widths_rates(change, tied):
    torch.manual_seed(2)
    old_cfg = DecoderConfig(**{**MUP.to_dict(), "tied_embeddings": tied})
    new_cfg = DecoderConfig(**{**old_cfg.to_dict(), **change})
    old = Decoder(old_cfg)
    tokens = torch.randint(0, 64, (3, 16))
    with torch.no_grad():
        grown, _, _ = grow_decoder(old, new_cfg, grow_steps=5)
        assert torch.allclose(grown(tokens), old(tokens), atol=1e-5, rtol=0)
    assert grown.cfg.hidden / grown.cfg.mup_base_width == new_cfg.hidden / 32      # its own width_mult
    rates = {v["lr_mult"] for n, v in groups_by_name(grown).items() if n.endswith("mlp.up.weight")}
    assert rates == {32 / new_cfg.hidden}


def test_sharded_growth_under_mup_rescales_ln_f_and_its_adam_moments(grow_from_checkpoint):
    """The runtime's path (DCP checkpoint → meta-built, sharded stage): function kept, and ln_f's
    moments rescaled to the gradient's new scale, so Adam's next update equals its own."""
    torch.manual_seed(3)
    old_cfg = DecoderConfig(layers=1, hidden=16, heads=2, ffn=32, vocab=20, seq=8, mup=True, mup_base_width=16,
                            mup_output_mult=2.0)
    old = Decoder(old_cfg)
    opt = make_optimizer(old, 1e-3)
    tokens = torch.randint(0, 20, (2, 8))
    old(tokens).sum().backward()
    opt.step()
    opt.zero_grad()
    old_m = opt.state[old.ln_f.weight]["exp_avg"].clone()
    cfg = DecoderConfig(**{**old_cfg.to_dict(), "hidden": 32, "heads": 4, "ffn": 64})     # width_mult 1 → 2
    grown, grown_opt = grow_from_checkpoint(old, opt, cfg)
    with torch.no_grad():
        assert torch.allclose(grown(tokens), old(tokens), atol=1e-5, rtol=0)
    # r = readout_mult(old) / readout_mult(new) = 2 / 1 = 2: ln_f × 2, exp_avg / 2.
    assert torch.allclose(grown.ln_f.weight[:16], old.ln_f.weight * 2)
    assert torch.allclose(grown_opt.state[grown.ln_f.weight]["exp_avg"][:16], old_m / 2)


def test_exports_refuse_mup_unless_nearest(tmp_path):
    """Neither Megatron-LM nor torchtitan has µP: refused with the field named, or exported as SP with the
    difference written down."""
    import json
    from pathlib import Path

    from typer.testing import CliRunner

    from flmplan.cli import app

    plan = json.loads((Path(__file__).parents[1] / "examples/plans/tiny_one_stage.json").read_text())
    plan["stages"][0]["model"]["position"] = "rotary"
    plan["stages"][0]["parametrization"] = {"kind": "mup", "base_width": 32}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    for tool in ("megatron", "torchtitan"):
        r = CliRunner().invoke(app, ["export", str(path), "--to", tool, "--out", str(tmp_path / tool)])
        assert r.exit_code == 2 and "parametrized by µP (parametrization.kind)" in r.output, r.output
    r = CliRunner().invoke(app, ["export", str(path), "--to", "megatron", "--nearest", "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert "Standard parametrization in place of µP" in "".join(p.read_text() for p in (tmp_path / "m").iterdir())
