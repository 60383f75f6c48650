"""MSG growth is function-preserving (property-based over shapes) and carries the optimizer."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.growth.msg import GrowthState, apply_masks, block_mapping, grow_decoder, grow_sharded
from runtime.model.decoder import Decoder, DecoderConfig

torch.set_default_dtype(torch.float32)


@st.composite
def growths(draw):
    head_dim = draw(st.sampled_from([4, 8]))
    heads = draw(st.integers(1, 3))
    kv_ratio = draw(st.sampled_from([1, heads])) if heads > 1 else 1
    layers = draw(st.integers(1, 3))
    ffn = draw(st.integers(4, 24))
    dims = draw(st.sets(st.sampled_from(["hidden", "ffn", "heads", "depth"]), min_size=1))
    new_heads = heads * draw(st.integers(2, 3)) if dims & {"hidden", "heads"} else heads
    old = DecoderConfig(layers=layers, hidden=heads * head_dim, heads=heads, fixed_head_dim=head_dim,
                        kv_heads=heads // kv_ratio, ffn=ffn, vocab=31, seq=12,
                        position=draw(st.sampled_from(["rotary", "xpos"])), mup=draw(st.booleans()),
                        mup_base_width=head_dim, mup_output_mult=2.0, mup_attn_mult=draw(st.sampled_from([1.0, 3.0])),
                        activation=draw(st.sampled_from(["gelu", "swiglu"])), tied_embeddings=draw(st.booleans()))
    new = DecoderConfig(
        layers=layers * 2 if "depth" in dims else layers,
        hidden=new_heads * head_dim if "hidden" in dims else old.hidden,
        heads=new_heads, fixed_head_dim=head_dim, kv_heads=new_heads // kv_ratio,
        ffn=ffn + draw(st.integers(1, 16)) if "ffn" in dims else ffn,
        vocab=31, seq=12, position=old.position, activation=old.activation, tied_embeddings=old.tied_embeddings,
        mup=old.mup, mup_base_width=old.mup_base_width, mup_output_mult=old.mup_output_mult,
        mup_attn_mult=old.mup_attn_mult)   # µP: the grown model has its own width_mult
    return old, new, draw(st.integers(0, 10_000))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(growths())
def test_logits_after_growth_equal_logits_before(case):
    old_cfg, new_cfg, seed = case
    torch.manual_seed(seed)
    old = Decoder(old_cfg)
    tokens = torch.randint(0, 31, (2, 12))
    with torch.no_grad():
        before = old(tokens)
        grown, _state, _ = grow_decoder(old, new_cfg, grow_steps=10)
        after = grown(tokens)
    assert after.shape == before.shape
    assert torch.allclose(after, before, atol=1e-5, rtol=0), (after - before).abs().max()


def test_each_dimension_alone_and_combined():
    base = DecoderConfig(layers=2, hidden=32, heads=4, ffn=64, vocab=50, seq=16)
    variants = {
        "hidden+heads": dict(hidden=64, heads=8),
        "ffn": dict(ffn=96),
        "heads": dict(heads=6, hidden=32, fixed_head_dim=8),
        "depth": dict(layers=4),
        "all": dict(hidden=64, heads=8, ffn=256, layers=4),
    }
    for name, change in variants.items():
        torch.manual_seed(0)
        old = Decoder(base)
        tokens = torch.randint(0, 50, (3, 16))
        cfg = DecoderConfig(**{**base.to_dict(), **change})
        with torch.no_grad():
            grown, state, _ = grow_decoder(old, cfg, grow_steps=5)
            assert torch.allclose(grown(tokens), old(tokens), atol=1e-5), name
            # Halfway through the ramp the new units contribute; at the end the masks are gone.
            apply_masks(grown, state, 0.5)
            assert not torch.allclose(grown(tokens), old(tokens), atol=1e-4), name
            apply_masks(grown, state, 1.0)
            assert grown.hidden_mask is None and all(b.depth_gate is None for b in grown.blocks.values())


def test_mask_ramp_and_block_mapping():
    s = GrowthState(32, 64, 64, 128, 4, 8, ["1"], grow_steps=100)
    assert (s.value(0), s.value(50), s.value(100), s.value(500)) == (0.0, 0.5, 1.0, 1.0)
    assert block_mapping(2, 4) == {0: (0, False), 1: (0, True), 2: (1, False), 3: (1, True)}
    assert [v[1] for v in block_mapping(3, 4).values()].count(True) == 1


def test_sharded_growth_from_a_checkpoint_preserves_the_function_and_the_optimizer(process_group, tmp_path):
    """The runtime's path: the old stage saved by DCP, the new one built on the meta device and
    grown from the checkpoint — same logits as the old model, Adam moments carried."""
    from planner.model.specs import Layout
    from runtime import checkpoint
    from runtime.parallel.optim import make_optimizer
    from runtime.parallel.parallelize import make_mesh, parallelize

    torch.manual_seed(1)
    base = DecoderConfig(layers=1, hidden=16, heads=2, ffn=32, vocab=20, seq=8)
    old = Decoder(base)
    opt = torch.optim.AdamW(old.parameters(), lr=1e-3)
    tokens = torch.randint(0, 20, (2, 8))
    old(tokens).sum().backward()
    opt.step()
    opt.zero_grad()
    checkpoint.save(tmp_path, "old", [old], [opt], {"global_step": 1})
    names = {id(p): n for n, p in old.named_parameters()}
    old_state = {names[id(p)]: s for p, s in opt.state.items()}

    cfg = DecoderConfig(layers=2, hidden=32, heads=4, ffn=64, vocab=20, seq=8)
    layout = Layout(tp=1, pp=1, dp=1, micro_batch=2, global_batch=2)
    with torch.device("meta"):
        new = Decoder(cfg)
    pm = parallelize(new, layout, make_mesh(layout, "cpu"), torch.device("cpu"), seed=5)
    opts = [make_optimizer(c, 1e-3) for c in pm.chunks]
    state = grow_sharded(pm.chunks, opts, tmp_path / "old", base, grow_steps=4)
    grown = pm.chunks[0]
    with torch.no_grad():
        assert torch.allclose(grown(tokens), old(tokens), atol=1e-5, rtol=0)
    assert state.new_blocks == ["1"] and state.hidden_new == 32
    by_name = {n: opts[0].state[p] for n, p in grown.named_parameters()}
    w = "blocks.0.mlp.up.weight"
    assert torch.equal(by_name[w]["exp_avg"][:32, :16], old_state[w]["exp_avg"])
    assert torch.count_nonzero(by_name[w]["exp_avg"][32:]) == 0
    assert torch.count_nonzero(by_name["blocks.1.mlp.up.weight"]["exp_avg_sq"]) == 0   # a new block
    assert float(by_name[w]["step"]) == 1.0
    # The grown model trains: one optimizer step from the carried state runs and changes the weights.
    before = grown.blocks["0"].mlp.up.weight.detach().clone()
    grown(tokens).sum().backward()
    opts[0].step()
    assert not torch.equal(before, grown.blocks["0"].mlp.up.weight)
