"""`flmplan grow`: the first weights of a stage, grown from the previous stage's checkpoint of another
tool, in that tool's own format. flmplan's runtime grows by MSG, whose masks ramp the new units in;
the tools have no masks, so the growth here is function-preserving without them (the grown model
computes what the old one did, to rounding):

- depth: each old block is followed by its copies (G_stack's order, `runtime/grow.block_mapping`),
  whose output projections (attention and MLP, with their biases) are zero, so the copy adds nothing to
  the residual stream until trained (a zero-initialised residual branch);
- heads and MLP neurons: new rows of the input projections are drawn as at init; the columns of the
  output projections that read them are zero;
- hidden width, by the norm the tool's decoder has:
  - RMSNorm (torchtitan): new residual dimensions start at zero (zero embedding columns, zero
    output-projection rows), and each RMSNorm gain is scaled by √(d_old / d_new): the mean square over
    d_new dimensions of which d_old are non-zero is d_old / d_new of the old one, so the normalised old
    dimensions are unchanged (Staged Training's width operator, Shen et al. 2022, for RMSNorm);
  - LayerNorm (Megatron-LM), whose mean zero dimensions would move: new residual dimensions carry the
    mean of the old ones (LEMON's average expansion, Wang et al. 2024): every writer to the residual
    stream (embeddings, output projections and their biases) writes, in each new dimension, the mean of
    what it writes in the old ones, so the stream's mean is unchanged and its variance is d_old / d_new
    of the old one. Gains scaled by √(d_old / d_new) restore the normalised old dimensions; the new ones
    normalise to zero (zero bias), so the next layers read nothing from them until trained.
  Either way the exported stage's ε is smaller by d_old / d_new (`planner.export.stage_facts.grown_norm_eps`).

Targets:
- torchtitan (0.3.0, llama3: RMSNorm, SwiGLU, rotary): its checkpoints are DCP, a model-only one keyed by
  the model's own parameter names, which `checkpoint.initial_load_path` with `initial_load_model_only`
  loads;
- Megatron-LM (GPT: LayerNorm, biases, GeLU or SwiGLU): megatron-core's `torch_dist` format, a DCP folder
  keyed by megatron-core's sharded keys (Transformer Engine's names, which the local spec maps to; the
  blocks stacked on a leading axis), with its `metadata.json` and `common.pt`, as a `release` checkpoint
  that `--pretrained-checkpoint` loads with any tensor- and pipeline-parallel layout.

The grown checkpoint is written a box at a time (`runtime.checkpoint.save_chunks`): a block's tensor per
block, an embedding a few rows at a time, each computed from the old block it comes from when DCP writes
it. Memory holds one old block and one box, whatever the depth; a tool's ranks read the boxes they need.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import warnings
from pathlib import Path

import torch

from planner.errors import FlmplanError

TARGETS = ("torchtitan", "megatron")
# Both tools draw linear weights with std 0.02 by default (planner/data/torchtitan_registry.py;
# Megatron-LM's --init-method-std).
INIT_STD = 0.02


def _names(shape: dict) -> dict[str, tuple[int, ...]]:
    """torchtitan llama3's parameter names and shapes for a shape of `planner.export.torchtitan.torchtitan_shape`."""
    d, h, kv, f, v = shape["dim"], shape["heads"], shape["kv_heads"], shape["ffn"], shape["vocab"]
    hd = d // h
    out = {"tok_embeddings.weight": (v, d), "norm.weight": (d,)}
    for i in range(shape["layers"]):
        p = f"layers.{i}."
        out |= {p + "attention.qkv_linear.wq.weight": (h * hd, d), p + "attention.qkv_linear.wk.weight": (kv * hd, d),
                p + "attention.qkv_linear.wv.weight": (kv * hd, d), p + "attention.wo.weight": (d, h * hd),
                p + "feed_forward.w1.weight": (f, d), p + "feed_forward.w2.weight": (d, f),
                p + "feed_forward.w3.weight": (f, d), p + "attention_norm.weight": (d,), p + "ffn_norm.weight": (d,)}
    out["lm_head.weight"] = (v, d)       # the embedding itself when tied (the same tensor)
    return out


BLOCKS = "decoder.layers."           # megatron-core's blocks, stacked on a leading axis in a checkpoint
# The linear modules of a block, each with an extra state (Transformer Engine's FP8 metadata; none in
# the local spec) that a checkpoint holds one object of per block.
_MEGATRON_LINEARS = ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1", "mlp.linear_fc2")


def _megatron_names(shape: dict) -> dict[str, tuple[int, ...]]:
    """megatron-core GPT's sharded keys and global shapes for a shape of `planner.export.megatron.megatron_shape`."""
    d, h, kv, f, v = shape["dim"], shape["heads"], shape["kv_heads"], shape["ffn"], shape["vocab"]
    hd, fc1 = d // h, 2 * f if shape["swiglu"] else f
    qkv = (h + 2 * kv) * hd         # per query group: its query heads, then one key and one value head
    block = {"self_attention.linear_qkv.layer_norm_weight": (d,), "self_attention.linear_qkv.layer_norm_bias": (d,),
             "self_attention.linear_qkv.weight": (qkv, d), "self_attention.linear_qkv.bias": (qkv,),
             "self_attention.linear_proj.weight": (d, h * hd), "self_attention.linear_proj.bias": (d,),
             "mlp.linear_fc1.layer_norm_weight": (d,), "mlp.linear_fc1.layer_norm_bias": (d,),
             "mlp.linear_fc1.weight": (fc1, d), "mlp.linear_fc1.bias": (fc1,),
             "mlp.linear_fc2.weight": (d, f), "mlp.linear_fc2.bias": (d,)}
    out = {"embedding.word_embeddings.weight": (v, d)}
    if shape["learned_positions"]:
        out["embedding.position_embeddings.weight"] = (shape["seq"], d)
    out |= {BLOCKS + name: (shape["layers"], *s) for name, s in block.items()}
    out |= {"decoder.final_layernorm.weight": (d,), "decoder.final_layernorm.bias": (d,)}
    if not shape["tied"]:
        out["output_layer.weight"] = (v, d)
    return out


def check_growth(old: dict, new: dict) -> None:
    """Refuse, in one sentence, a pair of shapes this growth cannot take without changing the function."""
    problems = []
    for key in ("vocab", "seq", "tied"):
        if old[key] != new[key]:
            problems.append(f"{key} changes ({old[key]} → {new[key]})")
    if old["dim"] // old["heads"] != new["dim"] // new["heads"]:
        problems.append(f"the head width changes ({old['dim'] // old['heads']} → {new['dim'] // new['heads']}), "
                        "which rotary positions depend on")
    if old["heads"] // old["kv_heads"] != new["heads"] // new["kv_heads"]:
        problems.append("the query heads per key/value head change, which regroups the old heads")
    for key in ("layers", "dim", "heads", "ffn"):
        if new[key] < old[key]:
            problems.append(f"{key} shrinks ({old[key]} → {new[key]})")
    if problems:
        raise FlmplanError(f"This growth cannot keep the model's function: {'; '.join(problems)}.")


def _leading(source: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """`base` with the old tensor in its leading block (the old units where they were)."""
    base[tuple(slice(0, n) for n in source.shape)] = source
    return base


def _drawn(shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """New weights as the tools draw them at init."""
    return (torch.randn(shape, generator=generator) * INIT_STD).to(dtype)


def _norm_gain(source: torch.Tensor, shape: tuple[int, ...], d0: int, d1: int) -> torch.Tensor:
    """A norm's gain over the grown width, every entry scaled by √(d_old / d_new): the normalised old
    dimensions come out as before (the module docstring says why, for either norm)."""
    gain = math.sqrt(d0 / d1)
    return _leading(source * gain, torch.full(shape, gain, dtype=source.dtype))


def _grow_torchtitan_tensor(part: str, source: torch.Tensor, shape: tuple[int, ...], d0: int, d1: int,
                            is_copy: bool, generator: torch.Generator) -> torch.Tensor:
    """One grown tensor of a block (`part` without the block prefix) or of the model: zero new residual
    dimensions under RMSNorm (see the module docstring)."""
    if part.endswith("norm.weight"):
        return _norm_gain(source, shape, d0, d1)
    t = _leading(source, _drawn(shape, generator, source.dtype))
    # What keeps the function: new residual dimensions stay zero (embedding columns, output-projection
    # rows), the output projections read nothing from new heads and neurons, and a copied block's
    # branch adds nothing.
    if part == "tok_embeddings.weight":
        t[:, d0:] = 0
    elif part in ("attention.wo.weight", "feed_forward.w2.weight"):
        t[d0:, :] = 0
        t[:, source.shape[1]:] = 0
        if is_copy:
            t.zero_()
    return t


_EMBEDDINGS = ("embedding.word_embeddings.weight", "embedding.position_embeddings.weight")
_OUT_PROJECTIONS = ("self_attention.linear_proj", "mlp.linear_fc2")


def _grow_megatron_tensor(part: str, source: torch.Tensor, shape: tuple[int, ...], d0: int, d1: int,
                          is_copy: bool, generator: torch.Generator, swiglu: bool = False) -> torch.Tensor:
    """One grown tensor of a block (`part` without the block prefix) or of the model: the average
    expansion of the residual stream under LayerNorm (see the module docstring)."""
    if part.endswith(("layer_norm_weight", "final_layernorm.weight")):
        return _norm_gain(source, shape, d0, d1)
    if part.endswith(("layer_norm_bias", "final_layernorm.bias")):
        return _leading(source, torch.zeros(shape, dtype=source.dtype))   # new dimensions normalise to zero
    if swiglu and part.startswith("mlp.linear_fc1."):
        # SwiGLU's gated and linear halves are stacked along the rows; each takes its new neurons.
        half = (shape[0] // 2, *shape[1:])
        return torch.cat([_grow_megatron_tensor("fc1 half", h, half, d0, d1, is_copy, generator)
                          for h in source.chunk(2)])
    base = torch.zeros(shape, dtype=source.dtype) if part.endswith("bias") else _drawn(shape, generator, source.dtype)
    t = _leading(source, base)
    if part in _EMBEDDINGS:
        t[:, d0:] = t[:, :d0].float().mean(1, keepdim=True)
    elif part.startswith(_OUT_PROJECTIONS):
        if part.endswith("weight"):
            t[:, source.shape[1]:] = 0         # reads nothing from new heads and neurons
        if is_copy:
            t.zero_()                          # a copied block's branch adds nothing
        t[d0:] = t[:d0].float().mean(0, keepdim=True)
    return t


# Rows of an embedding or output matrix per box written: 2^27 elements (256 MiB in bf16) at most.
BOX_ELEMENTS = 1 << 27


class _Growth:
    """A grown checkpoint as boxes, each computed from the old checkpoint when it is written: blocks in
    order, the old block they come from read once (`runtime.checkpoint.load_regions`), embeddings and
    output matrices a few rows at a time. Memory holds an old block and a box, never a model."""

    def __init__(self, saved: Path, target: str, old: dict, new: dict, generator: torch.Generator) -> None:
        from torch.distributed.checkpoint import FileSystemReader

        from runtime.growth.msg import block_mapping

        self.saved, self.target, self.old, self.new, self.generator = saved, target, old, new, generator
        megatron = target == "megatron"
        self.old_names = _megatron_names(old) if megatron else _names(old)
        self.new_names = _megatron_names(new) if megatron else _names(new)
        # torchtitan's tied output matrix is the embedding's own tensor, which a writer may store once; it
        # is written under both names, as torchtitan's model-only state dict has both.
        self.tied_head = not megatron and new["tied"]
        if self.tied_head:
            self.old_names.pop("lm_head.weight")
        try:
            saved_md = FileSystemReader(str(saved)).read_metadata().state_dict_metadata
        except (OSError, ValueError, RuntimeError) as err:
            raise FlmplanError(f"{saved} is not a torch.distributed.checkpoint folder ({err}).") from None
        saved_shapes = {n: tuple(getattr(md, "size", ())) for n, md in saved_md.items()}
        wrong = [f"{n} {saved_shapes[n]} (expected {s})" for n, s in self.old_names.items()
                 if n in saved_shapes and saved_shapes[n] != s]
        missing = [n for n in self.old_names if n not in saved_md]
        if missing or wrong:
            what = (f"lacks {len(missing)} of the stage's parameters (e.g. {missing[0]})" if missing
                    else f"holds other shapes: {wrong[0]}")
            layout = "Megatron-LM's layout" if megatron else "torchtitan's layout"
            raise FlmplanError(f"Checkpoint {saved} is not this plan's previous stage in {layout}: it {what}.")
        self.dtypes = {n: saved_md[n].properties.dtype for n in self.old_names}
        if self.tied_head:
            self.dtypes["lm_head.weight"] = self.dtypes["tok_embeddings.weight"]
        self.mapping = block_mapping(old["layers"], new["layers"])
        self._block: tuple[int | None, dict[str, torch.Tensor]] = (None, {})

    def _block_part(self, name: str) -> tuple[int, str] | None:
        """(new block, part) of a block tensor's name or box, None for the model's own tensors."""
        if self.target == "megatron":
            return None if not name.startswith(BLOCKS) else (-1, name[len(BLOCKS):])
        m = re.match(r"layers\.(\d+)\.(.*)", name)
        return (int(m.group(1)), m.group(2)) if m else None

    def boxes(self) -> list:
        """Every box of the grown checkpoint, blocks in order (so each old block is read once)."""
        out = []
        if self.target == "megatron":
            parts = [n for n in self.new_names if n.startswith(BLOCKS)]
            for j in range(self.new["layers"]):
                out += [(n, self.new_names[n], self.dtypes[n], (j,) + (0,) * (len(self.new_names[n]) - 1),
                         (1, *self.new_names[n][1:])) for n in parts]
        for name, shape in self.new_names.items():
            if self.target == "megatron" and name.startswith(BLOCKS):
                continue
            block = self._block_part(name)
            dtype = self.dtypes[f"layers.0.{block[1]}" if block else name]     # a new block's as the old ones'
            if len(shape) == 2 and block is None:
                rows = max(1, BOX_ELEMENTS // shape[1])
                out += [(name, shape, dtype, (r, 0), (min(rows, shape[0] - r), shape[1]))
                        for r in range(0, shape[0], rows)]
            else:
                out.append((name, shape, dtype, (0,) * len(shape), shape))
        return out

    def _old_block(self, src: int) -> dict[str, torch.Tensor]:
        """Old block `src`'s tensors by part, read once for all the boxes that come from it."""
        from runtime.checkpoint import load_regions

        if self._block[0] != src:
            if self.target == "megatron":
                regions = {n[len(BLOCKS):]: (n, (src,) + (0,) * (len(s) - 1), (1, *s[1:]))
                           for n, s in self.old_names.items() if n.startswith(BLOCKS)}
            else:
                prefix = f"layers.{src}."
                regions = {n[len(prefix):]: (n, (0,) * len(s), s) for n, s in self.old_names.items()
                           if n.startswith(prefix)}
            read = load_regions(self.saved, regions, {k: self.dtypes[n] for k, (n, _, _) in regions.items()},
                                torch.device("cpu"))
            if self.target == "megatron":
                read = {k: v[0] for k, v in read.items()}
            self._block = (src, read)
        return self._block[1]

    def make(self, name: str, offsets: tuple[int, ...], sizes: tuple[int, ...]) -> torch.Tensor:
        """The grown box [offsets, offsets + sizes) of tensor `name`."""
        from runtime.checkpoint import load_regions

        d0, d1 = self.old["dim"], self.new["dim"]
        block = self._block_part(name)
        if block is not None:
            j, part = (offsets[0], block[1]) if self.target == "megatron" else block
            src, is_copy = self.mapping[j]
            source = self._old_block(src)[part]
            shape = sizes[1:] if self.target == "megatron" else sizes
        else:
            part = "tok_embeddings.weight" if name == "lm_head.weight" and self.tied_head else name
            is_copy, shape = False, sizes
            # Boxes of rows (2-D) or the whole tensor (1-D), from the old tensor's same rows.
            old_sizes = (sizes[0], self.old_names[part][1]) if len(sizes) == 2 else self.old_names[part]
            source = load_regions(self.saved, {part: (part, offsets, old_sizes)}, {part: self.dtypes[part]},
                                  torch.device("cpu"))[part]
        if self.target == "megatron":
            t = _grow_megatron_tensor(part, source, shape, d0, d1, is_copy, self.generator, self.new["swiglu"])
            return t[None] if block is not None else t
        return _grow_torchtitan_tensor(part, source, shape, d0, d1, is_copy, self.generator)

    def parameters(self) -> int:
        """The grown model's parameters, a tied output matrix counted once (as the embedding)."""
        return sum(math.prod(s) for n, s in self.new_names.items() if not (self.tied_head and n == "lm_head.weight"))


TRACKER = "latest_checkpointed_iteration.txt"      # Megatron-LM's pointer to a --save folder's newest checkpoint


def megatron_checkpoint_dir(path: Path) -> Path:
    """The torch_dist folder of a Megatron-LM checkpoint: `path` itself, or the one its tracker file
    names when `path` is a --save folder."""
    tracker = path / TRACKER
    if tracker.is_file():
        it = tracker.read_text().strip()
        if it != "release" and not it.isdigit():
            raise FlmplanError(f"{tracker} names no checkpoint ({it!r}); Megatron-LM writes an iteration number there.")
        path = path / ("release" if it == "release" else f"iter_{int(it):07d}")
    try:
        backend = json.loads((path / "metadata.json").read_text()).get("sharded_backend")
    except (OSError, ValueError):
        raise FlmplanError(f"{path} is not a Megatron-LM checkpoint in torch_dist format (it has no readable "
                           "metadata.json); give the --save folder or one of its iter_* folders.") from None
    if backend != "torch_dist":
        raise FlmplanError(f"{path} is a Megatron-LM checkpoint in {backend} format; flmplan grow reads torch_dist, "
                           "Megatron-LM's default --ckpt-format.")
    return path


def _write(growth: _Growth, out: Path) -> None:
    """The grown checkpoint in the target's layout, written to a temporary folder beside `out` and then
    renamed: whole or absent. Megatron-LM's is a `release` checkpoint in megatron-core's torch_dist format:
    the tracker file that --pretrained-checkpoint looks for, and in release/ the DCP files,
    metadata.json and common.pt."""
    from runtime.checkpoint import save_chunks

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with warnings.catch_warnings():      # DCP's note that it writes from one process, which is the intent
        warnings.simplefilter("ignore", UserWarning)
        if growth.target == "torchtitan":
            save_chunks(tmp, growth.boxes(), growth.make)
        else:
            blocks = growth.new["layers"]
            # A ShardedObject per block and linear module, keyed as megatron-core keys it and stored as it
            # stores one (DCP pickles the list of the shards' data); empty (None), as the local spec's,
            # which Transformer Engine's set_extra_state skips.
            objects = {f"{BLOCKS}{linear}._extra_state/shard_{i}_{blocks}": [None]
                       for linear in _MEGATRON_LINEARS for i in range(blocks)}
            save_chunks(tmp / "release", growth.boxes(), growth.make, objects)
            (tmp / "release" / "metadata.json").write_text(json.dumps(
                {"sharded_backend": "torch_dist", "sharded_backend_version": 1, "common_backend": "torch",
                 "common_backend_version": 1}))
            # Megatron-LM's current checkpoint version (its QKV layout needs no reordering); a release has no
            # iteration.
            torch.save({"checkpoint_version": 3.0, "iteration": 0}, tmp / "release" / "common.pt")
            (tmp / TRACKER).write_text("release")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def grow_checkpoint(checkpoint: Path, plan, stage: int, target: str, out: Path, seed: int = 0) -> dict:
    """Stage `stage`'s first weights (1-based) from the previous stage's `target` checkpoint."""
    from planner.export.megatron import megatron_shape
    from planner.export.torchtitan import torchtitan_shape

    if target not in TARGETS:
        raise FlmplanError(f"flmplan grow writes checkpoints for {' and '.join(TARGETS)}; --to {target} is not one.")
    if not 2 <= stage <= len(plan.stages):
        raise FlmplanError(f"--stage must be a grown stage of the plan, 2 to {len(plan.stages)}; got {stage}.")
    if not plan.stages[stage - 1].growth:
        raise FlmplanError(f"Stage {stage} of the plan is not grown (it has no growth); nothing to write.")
    k = stage - 1
    shape_of = torchtitan_shape if target == "torchtitan" else megatron_shape
    old, new = shape_of(plan, plan.stages[k].growth.from_stage), shape_of(plan, k)
    check_growth(old, new)
    if not checkpoint.is_dir():
        example = "outputs/checkpoint/step-1000" if target == "torchtitan" else f"checkpoints/stage{stage - 1}"
        raise FlmplanError(f"{checkpoint} is not a checkpoint folder; give stage {stage - 1}'s {target} "
                           f"checkpoint (e.g. {example}).")
    marker = ".metadata" if target == "torchtitan" else TRACKER
    if out.is_dir() and any(out.iterdir()) and not (out / marker).is_file():
        raise FlmplanError(f"--out {out} already holds files that are not a checkpoint; give an empty or new "
                           "folder (a grown checkpoint written before is replaced).")
    saved = checkpoint if target == "torchtitan" else megatron_checkpoint_dir(checkpoint)
    growth = _Growth(saved, target, old, new, torch.Generator().manual_seed(seed))
    _write(growth, out)
    load = ("load it with checkpoint.initial_load_path and initial_load_model_only" if target == "torchtitan"
            else "the exported arguments load it with --pretrained-checkpoint")
    return {"stage": stage, "from": str(checkpoint), "out": str(out), "old": old, "new": new,
            "parameters": growth.parameters(), "load": load}
