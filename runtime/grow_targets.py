"""`flmplan grow`: the first weights of a stage, grown from the previous stage's checkpoint of another
tool, in that tool's own format. flmplan's runtime grows by MSG, whose masks ramp the new units in;
the tools have no masks, so the growth here is function-preserving without them (the grown model
computes what the old one did, to rounding):

- depth: each old block is followed by its copies (G_stack's order, `runtime/grow.block_mapping`),
  whose output projections (attention `wo`, MLP `w2`) are zero, so the copy adds nothing to the
  residual stream until trained (a zero-initialised residual branch);
- heads and MLP neurons: new rows of the input projections are drawn as at init; the columns of the
  output projections that read them are zero;
- hidden width: new residual dimensions start at zero (zero embedding columns, zero output-projection
  rows), and each RMSNorm gain is scaled by √(d_old / d_new): the mean square over d_new dimensions of
  which d_old are non-zero is d_old / d_new of the old one, so the normalised old dimensions are
  unchanged (Staged Training's width operator, Shen et al. 2022, for RMSNorm instead of LayerNorm);
  the exported stage's RMSNorm ε is smaller by the same factor (`planner.export.torchtitan_shape`).

torchtitan (0.3.0, llama3: RMSNorm, SwiGLU, rotary) is the target: its checkpoints are DCP, a model-only
one keyed by the model's own parameter names, which `checkpoint.initial_load_path` with
`initial_load_model_only` loads. Megatron-LM is not a target yet: its checkpoint (megatron-core's
dist_checkpointing) and its LayerNorm, which zero dimensions do not leave unchanged, need their own
operator; `flmplan grow` says so.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import torch

from planner.errors import FlmplanError

TARGETS = ("torchtitan",)
INIT_STD = 0.02      # torchtitan's registry draws linear weights with std 0.02 (planner/data/torchtitan_registry.py)


def _names(shape: dict) -> dict[str, tuple[int, ...]]:
    """torchtitan llama3's parameter names and shapes for a shape of `planner.export.torchtitan_shape`."""
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


def grow_torchtitan(old_sd: dict[str, torch.Tensor], old: dict, new: dict,
                    generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The grown model's parameters (torchtitan names) from the old ones; see the module docstring."""
    from runtime.grow import block_mapping

    check_growth(old, new)
    d0, d1 = old["dim"], new["dim"]
    gain = math.sqrt(d0 / d1)
    mapping = block_mapping(old["layers"], new["layers"])
    out = {}
    for name, shape in _names(new).items():
        if name == "lm_head.weight" and new["tied"]:
            out[name] = out["tok_embeddings.weight"]
            continue
        m = re.match(r"layers\.(\d+)\.(.*)", name)
        if m:
            src, is_copy = mapping[int(m.group(1))]
            part = m.group(2)
            source = old_sd[f"layers.{src}.{part}"]
        else:
            part, is_copy, source = name, False, old_sd[name]
        if part.endswith("norm.weight"):
            t = torch.full(shape, gain, dtype=source.dtype)
            t[:d0] = source * gain
        else:
            # New entries as at init; the old block where it was.
            t = torch.randn(shape, generator=generator, dtype=source.dtype) * INIT_STD
            t[tuple(slice(0, n) for n in source.shape)] = source
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
        out[name] = t.contiguous()
    return out


def read_model(path: Path, shape: dict) -> dict[str, torch.Tensor]:
    """The model's parameters from a torchtitan DCP checkpoint (model-only, or a full training state
    whose model entries are at the top level), read whole on this process."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    try:
        saved = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    except (OSError, ValueError, RuntimeError) as err:
        raise FlmplanError(f"{path} is not a torch.distributed.checkpoint folder ({err}).") from None
    wanted = _names(shape)
    if shape["tied"]:
        wanted.pop("lm_head.weight")     # the embedding's own tensor; a writer may store it once
    wrong = [f"{n} {tuple(saved[n].size)} (expected {s})" for n, s in wanted.items()
             if n in saved and tuple(saved[n].size) != s]
    missing = [n for n in wanted if n not in saved]
    if missing or wrong:
        what = (f"lacks {len(missing)} of the stage's parameters (e.g. {missing[0]})" if missing
                else f"holds other shapes: {wrong[0]}")
        raise FlmplanError(f"Checkpoint {path} is not this plan's previous stage in torchtitan's layout: it {what}.")
    buffers = {n: torch.empty(s, dtype=saved[n].properties.dtype) for n, s in wanted.items()}
    with warnings.catch_warnings():      # DCP's note that it reads in one process, which is the intent
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(buffers, checkpoint_id=str(path))
    return buffers


def write_model(state: dict[str, torch.Tensor], out: Path) -> None:
    """A model-only DCP checkpoint, written to a temporary folder and renamed: whole or absent."""
    import shutil

    import torch.distributed.checkpoint as dcp

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(state, checkpoint_id=str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def grow_checkpoint(checkpoint: Path, plan, stage: int, target: str, out: Path, seed: int = 0) -> dict:
    """Stage `stage`'s first weights (1-based) from the previous stage's `target` checkpoint."""
    from planner.export import torchtitan_shape

    if target not in TARGETS:
        raise FlmplanError(f"flmplan grow writes torchtitan checkpoints only; Megatron-LM's (megatron-core's "
                           f"dist_checkpointing, LayerNorm models) is not written yet, so --to {target} is refused.")
    if not 2 <= stage <= len(plan.stages):
        raise FlmplanError(f"--stage must be a grown stage of the plan, 2 to {len(plan.stages)}; got {stage}.")
    if not plan.stages[stage - 1].growth:
        raise FlmplanError(f"Stage {stage} of the plan is not grown (it has no growth); nothing to write.")
    k = stage - 1
    old, new = torchtitan_shape(plan, plan.stages[k].growth.from_stage), torchtitan_shape(plan, k)
    check_growth(old, new)
    if not checkpoint.is_dir():
        raise FlmplanError(f"{checkpoint} is not a checkpoint folder; give stage {stage - 1}'s torchtitan "
                           "checkpoint (e.g. outputs/checkpoint/step-1000).")
    if out.is_dir() and any(out.iterdir()) and not (out / ".metadata").is_file():
        raise FlmplanError(f"--out {out} already holds files that are not a checkpoint; give an empty or new "
                           "folder (a grown checkpoint written before is replaced).")
    state = grow_torchtitan(read_model(checkpoint, old), old, new, torch.Generator().manual_seed(seed))
    write_model(state, out)
    unique = {id(t): t for t in state.values()}.values()      # a tied embedding counts once
    return {"stage": stage, "from": str(checkpoint), "out": str(out), "old": old, "new": new,
            "parameters": sum(t.numel() for t in unique)}
