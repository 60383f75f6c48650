"""Masked Structural Growth (Yao et al., ICLR 2024): grow a Decoder without changing its function.

Width (hidden, FFN, heads) and depth grow in one call. Old weights go to the top-left block
of the larger tensors; new entries get ordinary initialisation; masks that are 1 on old units
and c on new ones keep the grown model's output equal to the old one at c = 0. The mask
ramps c: 0 → 1 over `grow_steps` optimizer steps, then is removed. New blocks are copies of
the block before them, blended with identity: h ← c·Block(h) + (1 − c)·h.

The optimizer state is grown the same way: Adam moments of old slices kept, zeros for new
entries and new blocks, the step count kept. Under µP a wider model has a smaller readout
multiplier (output_mult / width_mult); the final LayerNorm's weight and bias absorb the change
(`readout_compensation`), so the function is kept and the grown model trains at its own width's
rates from the first step. In a run the operator is applied per shard
(`grow_sharded`): every rank reads from the old checkpoint only what lands in its shards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from planner.errors import FlmplanError
from planner.growth.operators import msg_problem
from runtime.checkpoint import load_regions, saved_shapes
from runtime.model import mup
from runtime.model.decoder import Decoder, DecoderConfig


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


def block_mapping(old_layers: int, new_layers: int, order: str = "interleaved") -> dict[int, tuple[int, bool]]:
    """new block index → (old block it comes from, is_new). "interleaved" (MSG's): old blocks keep their
    order, each followed by its copies, spread as evenly as possible (doubling: every block once).
    "stacked" (G_stack, Du et al. 2024 §2): the whole stack repeated, [0..L−1, 0..L−1, …]."""
    if order == "stacked":
        if new_layers % old_layers:
            raise FlmplanError(f"Stacking repeats the whole stack: {new_layers} blocks are not a multiple of "
                               f"{old_layers}.")
        return {j: (j % old_layers, j >= old_layers) for j in range(new_layers)}
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


def overlap(old_shape: tuple[int, ...], offsets: tuple[int, ...], sizes: tuple[int, ...]
            ) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """MSG's placement rule for one shard: old values fill the leading block of the grown tensor.
    For a shard of the grown tensor at `offsets` with `sizes`, the (old-tensor slices, shard
    slices) it receives, or None when the shard lies wholly outside the leading block."""
    src, dst = [], []
    for old, off, size in zip(old_shape, offsets, sizes, strict=True):
        lo, hi = off, min(off + size, old)
        if hi <= lo:
            return None
        src.append(slice(lo, hi))
        dst.append(slice(lo - off, hi - off))
    return tuple(src), tuple(dst)


def is_new_block(name: str, mapping: dict[int, tuple[int, bool]]) -> bool:
    """A parameter of a block that growth added (a copy: its Adam moments start at zero)."""
    return name.startswith("blocks.") and mapping[int(name.split(".")[1])][1]


def check_growth(oc: DecoderConfig, cfg: DecoderConfig) -> None:
    problem = msg_problem(oc, cfg)
    if problem:
        raise FlmplanError(f"MSG cannot grow {oc.layers}×{oc.hidden} into {cfg.layers}×{cfg.hidden}: {problem}.")
    if (oc.mup, oc.mup_base_width, oc.mup_attn_mult) != (cfg.mup, cfg.mup_base_width, cfg.mup_attn_mult):
        raise FlmplanError("A growth keeps the parametrization (SP or µP, its base width and attention multiplier).")


def readout_compensation(oc: DecoderConfig, cfg: DecoderConfig) -> float:
    """r with readout_mult(cfg) · r = readout_mult(oc): the factor on ln_f's weight and bias that keeps
    the logits of a µP model whose width grew (1 under SP, and for depth alone)."""
    return mup.readout_mult(oc) / mup.readout_mult(cfg)


def compensate_readout(chunk: Decoder, optimizer: torch.optim.Optimizer | None, r: float) -> None:
    """Scale ln_f (this rank's piece of it) by r, and its Adam moments to the gradient's new scale
    (the gradient of r·w is 1/r of w's: exp_avg / r, exp_avg_sq / r²), so the update is Adam's
    own."""
    if r == 1.0 or chunk.ln_f is None:
        return
    with torch.no_grad():
        for p in chunk.ln_f.parameters():
            local_box(p)[2].mul_(r)
            state = optimizer.state.get(p, {}) if optimizer is not None else {}
            if "exp_avg" in state:
                local_box(state["exp_avg"])[2].div_(r)
                local_box(state["exp_avg_sq"])[2].div_(r * r)


def growth_state(oc: DecoderConfig, cfg: DecoderConfig, grow_steps: int, order: str = "interleaved"
                 ) -> GrowthState:
    mapping = block_mapping(oc.layers, cfg.layers, order)
    return GrowthState(hidden_old=oc.hidden, hidden_new=cfg.hidden, ffn_old=oc.ffn, ffn_new=cfg.ffn,
                       heads_old=oc.heads, heads_new=cfg.heads,
                       new_blocks=[str(j) for j, (_, is_new) in mapping.items() if is_new], grow_steps=grow_steps)


def grow_decoder(old: Decoder, cfg: DecoderConfig, grow_steps: int, generator: torch.Generator | None = None
                 ) -> tuple[Decoder, GrowthState, dict[str, str]]:
    """A larger Decoder computing exactly what `old` computes (until the masks ramp), and the map
    new parameter name → old parameter name. The whole-model form of the operator, for models
    one process holds; `grow_sharded` applies the same rule shard by shard from a checkpoint."""
    oc = old.cfg
    check_growth(oc, cfg)
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
            region = overlap(tuple(old_sd[src].shape), (0,) * p.dim(), tuple(p.shape))
            if region is not None:
                p[region[1]] = old_sd[src][region[0]]
            if not is_new_block(name, mapping):
                name_map[name] = src
    compensate_readout(new, None, readout_compensation(oc, cfg))
    state = growth_state(oc, cfg, grow_steps)
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
    Works on a whole Decoder or a pipeline stage of one (blocks it does not own are absent).
    While the ramp runs the masks are updated in place (a compiled block keeps its graph); they
    are in the forward's compute dtype, so masking does not promote bf16 activations."""
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
    dtype = getattr(decoder, "compute_dtype", None) or ref.dtype
    device = ref.device

    def ramp(current: torch.Tensor | None, old: int, new: int, part: tuple[int, int] = (0, 1)
             ) -> torch.Tensor | None:
        """Ones on the `old` units, c on the new ones; `part` = (rank, size) of a tensor-parallel slice."""
        if new == old:
            return None
        rank, size = part
        units = torch.arange(new, device=device).chunk(size)[rank]
        mask = current if current is not None and current.shape == units.shape else torch.empty(
            units.shape, dtype=dtype, device=device)
        with torch.no_grad():
            mask.copy_(torch.where(units < old, 1.0, c))
        return mask

    decoder.hidden_mask = ramp(decoder.hidden_mask, state.hidden_old, state.hidden_new)
    for key, block in blocks.items():
        # Under tensor parallelism a block holds a slice of the neurons and heads.
        part = getattr(block, "tp_shard", (0, 1))
        block.mlp.ffn_mask = ramp(block.mlp.ffn_mask, state.ffn_old, state.ffn_new, part)
        block.attn.head_mask = ramp(block.attn.head_mask, state.heads_old, state.heads_new, part)
        if key in state.new_blocks:
            if block.depth_gate is None:
                block.depth_gate = torch.empty((), dtype=dtype, device=device)
            block.depth_gate.fill_(c)
        else:
            block.depth_gate = None


def local_box(t: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...], torch.Tensor]:
    """(global offsets, sizes, local tensor) of this rank's piece of a parameter or state."""
    if isinstance(t, DTensor):
        sizes, offsets = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
        return tuple(offsets), tuple(sizes), t.to_local()
    return (0,) * t.dim(), tuple(t.shape), t


def adam_state(p: torch.Tensor, fused: bool) -> dict[str, torch.Tensor]:
    """A zero AdamW state for `p`, laid out as torch.optim.AdamW makes its own (the fused kernel
    keeps the step count on the device)."""
    step_t = torch.zeros((), dtype=torch.float32, device=p.device if fused else "cpu")
    return {"step": step_t, "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}


def grow_sharded(chunks: list[Decoder], optimizers: list[torch.optim.Optimizer], old_checkpoint: Path,
                 old_cfg: DecoderConfig, grow_steps: int, order: str = "interleaved") -> GrowthState:
    """Grow the previous stage into this rank's already-sharded chunks of the new stage.

    Each rank reads from the old stage's checkpoint only the boxes that land in its own shards
    (weights, then each Adam moment, one kind at a time), so no rank ever holds the whole old
    or new model: the peak is this rank's share of the new stage plus one kind of its old share.
    The rule is `grow_decoder`'s: old values in the leading block, new blocks copy the block
    before them with zero moments, the step count kept (MSG §3.4). `order` "stacked" with `grow_steps`
    0 is G_stack instead: the whole stack repeated, at full strength at once (a control for MSG)."""
    cfg = chunks[0].cfg
    check_growth(old_cfg, cfg)
    mapping = block_mapping(old_cfg.layers, cfg.layers, order)
    shapes = saved_shapes(old_checkpoint)
    device = next(chunks[0].parameters()).device
    step_fqn = next(k for k in shapes if k.startswith("optim.state.") and k.endswith(".step"))
    step = torch.zeros(())               # read with the weights: one load per kind, none for it alone
    params = []
    for chunk, opt in zip(chunks, optimizers, strict=True):
        fused = bool(opt.defaults.get("fused"))
        for name, p in chunk.named_parameters():
            opt.state[p] = adam_state(p, fused)
            params.append((name, p, opt))
    for kind in ("model", "exp_avg", "exp_avg_sq"):
        regions, targets = {}, {}
        if kind == "model":
            regions["step"], targets["step"] = (step_fqn, (), ()), (step, ())
        for i, (name, p, opt) in enumerate(params):
            src = _source_name(name, mapping)
            if kind != "model" and is_new_block(name, mapping):
                continue              # a new block's moments start at zero
            fqn = f"model.{src}" if kind == "model" else f"optim.state.{src}.{kind}"
            if fqn not in shapes:
                continue              # new in this stage (FreeLM's head): its own init, zero moments
            dest = p if kind == "model" else opt.state[p][kind]
            offsets, sizes, local = local_box(dest)
            box = overlap(shapes[fqn], offsets, sizes)
            if box is None:
                continue
            src_box, dst_box = box
            key = f"{i}:{fqn}"
            regions[key] = (fqn, tuple(b.start for b in src_box), tuple(b.stop - b.start for b in src_box))
            targets[key] = (local, dst_box)
        dtypes = {k: t[0].dtype for k, t in targets.items()}
        read = load_regions(old_checkpoint, regions, dtypes, device)
        with torch.no_grad():
            for key, (local, dst_box) in targets.items():
                local[dst_box] = read.pop(key)
    for _, p, opt in params:                 # the step count kept (MSG §3.4)
        opt.state[p]["step"].fill_(float(step))
    for chunk, opt in zip(chunks, optimizers, strict=True):
        compensate_readout(chunk, opt, readout_compensation(old_cfg, cfg))
    state = growth_state(old_cfg, cfg, grow_steps, order)
    for chunk in chunks:
        apply_masks(chunk, state, 0.0)
    return state
