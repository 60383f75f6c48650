"""Masked Structural Growth (Yao et al., ICLR 2024): grow a Decoder without changing its function.

Width (hidden, FFN, heads) and depth grow in one call. Old weights go to the top-left block
of the larger tensors; new entries get ordinary initialisation; masks that are 1 on old units
and c on new ones keep the grown model's output equal to the old one at c = 0. The mask
ramps c: 0 → 1 over `grow_steps` optimizer steps, then is removed. New blocks are copies of
the block before them, blended with identity: h ← c·Block(h) + (1 − c)·h.

The optimizer state is grown the same way: Adam moments of old slices kept, zeros for new
entries and new blocks, the step count kept.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from runtime.model import Decoder, DecoderConfig


@dataclass
class GrowthState:
    """What must be ramped after a growth: which units are new."""

    hidden_old: int
    hidden_new: int
    ffn_old: int
    ffn_new: int
    heads_old: int
    heads_new: int
    new_blocks: list[str]
    grow_steps: int

    def value(self, step_in_stage: int) -> float:
        """c_t: 0 at the growth, 1 after grow_steps optimizer steps."""
        return 1.0 if self.grow_steps <= 0 else min(1.0, step_in_stage / self.grow_steps)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def block_mapping(old_layers: int, new_layers: int) -> dict[int, tuple[int, bool]]:
    """new block index → (old block it comes from, is_new). Old blocks keep their order; each
    is followed by its copies, spread as evenly as possible (doubling: every block once)."""
    extra = new_layers - old_layers
    out: dict[int, tuple[int, bool]] = {}
    j = 0
    for i in range(old_layers):
        out[j] = (i, False)
        j += 1
        copies = extra * (i + 1) // old_layers - extra * i // old_layers
        for _ in range(copies):
            out[j] = (i, True)
            j += 1
    return out


def _embed(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """`new` (freshly initialised) with `old` written into its leading block."""
    out = new.detach().clone()
    out[tuple(slice(0, s) for s in old.shape)] = old.detach()
    return out


def grow_decoder(old: Decoder, cfg: DecoderConfig, grow_steps: int, generator: torch.Generator | None = None
                 ) -> tuple[Decoder, GrowthState, dict[str, str]]:
    """A larger Decoder computing exactly what `old` computes (until the masks ramp), and the map
    new parameter name → old parameter name (for the optimizer state)."""
    oc = old.cfg
    if cfg.head_dim != oc.head_dim:
        raise ValueError(f"MSG keeps the head dimension: {oc.head_dim} → {cfg.head_dim} is not a growth.")
    for name in ("layers", "hidden", "heads", "ffn"):
        if getattr(cfg, name) < getattr(oc, name):
            raise ValueError(f"MSG cannot shrink {name}: {getattr(oc, name)} → {getattr(cfg, name)}.")
    if cfg.vocab != oc.vocab:
        raise ValueError("growth keeps the vocabulary")
    if cfg.heads * oc.n_kv_heads != oc.heads * cfg.n_kv_heads:
        raise ValueError("growth keeps the ratio of query heads to key/value heads (GQA groups)")
    # µP multipliers stay those of the model before growth, or the logits would change scale.
    cfg = replace(cfg, mup=oc.mup, mup_width_mult=oc.mup_width_mult, mup_output_mult=oc.mup_output_mult)
    new = Decoder(cfg)
    if generator is not None:
        new.init_weights(generator)
    mapping = block_mapping(oc.layers, cfg.layers)
    old_sd = old.state_dict()
    name_map: dict[str, str] = {}
    with torch.no_grad():
        for name, p in new.named_parameters():
            src = _source_name(name, mapping)
            if src is None or src not in old_sd:
                continue
            # Old weights in the leading block; a new block is a copy of the one before it.
            p.copy_(_embed(old_sd[src], p))
            if not (name.startswith("blocks.") and mapping[int(name.split(".")[1])][1]):
                name_map[name] = src
    state = GrowthState(hidden_old=oc.hidden, hidden_new=cfg.hidden, ffn_old=oc.ffn, ffn_new=cfg.ffn,
                        heads_old=oc.heads, heads_new=cfg.heads,
                        new_blocks=[str(j) for j, (_, is_new) in mapping.items() if is_new], grow_steps=grow_steps)
    apply_masks(new, state, 0.0)
    return new, state, name_map


def _source_name(name: str, mapping: dict[int, tuple[int, bool]]) -> str | None:
    if not name.startswith("blocks."):
        return name
    parts = name.split(".")
    j = int(parts[1])
    if j not in mapping:
        return None
    parts[1] = str(mapping[j][0])
    return ".".join(parts)


def apply_masks(model: nn.Module, state: GrowthState | None, c: float) -> None:
    """Set every MSG mask of `model` for ramp value c; c ≥ 1 (or no growth) removes them.
    Works on a whole Decoder or a pipeline stage of one (blocks it does not own are absent)."""
    decoder = model
    blocks = getattr(decoder, "blocks", {})
    if state is None or c >= 1.0:
        if hasattr(decoder, "hidden_mask"):
            decoder.hidden_mask = None
        for block in blocks.values():
            block.attn.head_mask = None
            block.mlp.ffn_mask = None
            block.depth_gate = None
        return
    ref = next(decoder.parameters())

    def ramp(old: int, new: int) -> torch.Tensor | None:
        if new == old:
            return None
        m = torch.full((new,), c, dtype=ref.dtype, device=ref.device)
        m[:old] = 1.0
        return m

    decoder.hidden_mask = ramp(state.hidden_old, state.hidden_new)
    ffn, heads = ramp(state.ffn_old, state.ffn_new), ramp(state.heads_old, state.heads_new)
    for key, block in blocks.items():
        # Under tensor parallelism a block holds a slice of the neurons and heads.
        rank, size = getattr(block, "tp_shard", (0, 1))
        block.mlp.ffn_mask = None if ffn is None else ffn.chunk(size)[rank]
        block.attn.head_mask = None if heads is None else heads.chunk(size)[rank]
        block.depth_gate = c if key in state.new_blocks else None


def grow_optimizer_state(old_state: dict[str, dict], new_params: dict[str, torch.Tensor],
                         name_map: dict[str, str]) -> dict[str, dict]:
    """Adam state per parameter name: old moments in the leading block, zeros elsewhere (and for
    new blocks), the step count kept (MSG §3.4)."""
    step = next((s["step"] for s in old_state.values() if "step" in s), torch.tensor(0.0))
    out = {}
    for name, p in new_params.items():
        src = name_map.get(name)
        entry = {"step": step.clone() if torch.is_tensor(step) else torch.tensor(float(step))}
        for key in ("exp_avg", "exp_avg_sq"):
            moment = torch.zeros_like(p)
            if src is not None and src in old_state and key in old_state[src]:
                moment = _embed(old_state[src][key], moment)
            entry[key] = moment
        out[name] = entry
    return out
