"""Map a plan onto this machine: each stage becomes a small model with the same growth steps
(width and/or depth, in the same order) and a layout that fits the local processes."""

from __future__ import annotations

import copy

from planner.model.specs import ModelSpec

TINY = {"hidden": 128, "layers": 4, "head_dim": 16, "seq": 64, "vocab": 256, "batch": 16, "steps": 40,
        "grow_steps": 8}


def _tiny_layout(layout: dict, nproc: int, global_batch: int) -> dict:
    """Keep the plan's kinds of parallelism, at degree 2 where the processes allow."""
    tp = 2 if layout["tp"] > 1 and nproc % 2 == 0 else 1
    pp = 2 if layout["pp"] > 1 and (nproc // tp) % 2 == 0 else 1
    dp = nproc // (tp * pp)
    micro = max(1, global_batch // (dp * max(2, 2 * pp)))
    # Round the batch up to whole micro-batches on every data-parallel rank: no sequence is dropped.
    unit = micro * dp
    global_batch = -(-global_batch // unit) * unit
    return {**layout, "tp": tp, "pp": pp, "dp": dp, "micro_batch": micro, "global_batch": global_batch,
            "interleave": 1, "attention": "flash",
            "sequence_parallel": bool(layout.get("sequence_parallel")) and tp > 1}   # needs tp ≥ 2


def tiny_plan(plan: dict, nproc: int, steps: int = TINY["steps"], vocab: int = TINY["vocab"]) -> dict:
    """A copy of `plan` whose stages are CPU-sized, in the same plan contract; `vocab` is the data's
    tokenizer's (bytes by default), rounded up to a multiple of 8 as vocabularies are padded."""
    vocab = max(TINY["vocab"], -(-vocab // 8) * 8)
    out = copy.deepcopy(plan)
    final = plan["stages"][-1]["model"]
    hd = TINY["head_dim"]
    prev = None
    for k, st in enumerate(out["stages"]):
        m = st["model"]
        # Heads in whole groups of query heads per key/value head (grouped-query attention kept),
        # and an even number of key/value heads, so tp = 2 divides them.
        group = m["heads"] // (m.get("kv_heads") or m["heads"])
        heads = max(2 * group, round(TINY["hidden"] * m["hidden"] / final["hidden"] / hd / (2 * group)) * 2 * group)
        layers = max(1, round(TINY["layers"] * m["layers"] / final["layers"]))
        hidden = heads * hd
        kv_heads = heads // group if m.get("kv_heads") else None
        st["model"] = {**m, "layers": layers, "hidden": hidden, "heads": heads, "kv_heads": kv_heads,
                       "ffn": hidden * m["ffn"] // m["hidden"], "vocab": vocab, "seq": TINY["seq"]}
        st["layout"] = _tiny_layout(st["layout"], nproc, TINY["batch"])
        st["steps"] = steps + (TINY["grow_steps"] if k else 0)
        st["tokens"] = float(st["steps"] * st["layout"]["global_batch"] * TINY["seq"])
        st["lr"] = 3e-3
        if (par := st.get("parametrization")) and par.get("kind") == "mup":
            # µP's width_mult kept: the base width shrinks with the model (one factor for every stage).
            tiny_final = max(2 * group, round(TINY["hidden"] / hd / (2 * group)) * 2 * group) * hd
            st["parametrization"] = {**par, "base_width": max(1, round(par.get("base_width", 256) * tiny_final
                                                                         / final["hidden"]))}
        if st.get("growth"):
            dims = {}
            for d, key in (("hidden", "hidden"), ("ffn", "ffn"), ("heads", "heads"), ("layers", "layers")):
                if prev[key] != st["model"][key]:
                    dims[d] = [prev[key], st["model"][key]]
            st["growth"] = {**st["growth"], "dims": dims, "grow_steps": TINY["grow_steps"], "lr_rewarm_steps": 4}
        prev = st["model"]
        # Named by its own size, the plan's stage beside it: the run's lines read what they train.
        st["name"] = f"{_size_name(ModelSpec(**st['model']).params())} (plan: {st.get('name', f'stage {k + 1}')})"
    out["name"] = f"{plan.get('name', 'plan')} (tiny scale for {nproc} CPU processes)"
    out["dtype"] = "fp32"
    out["cluster"] = {**out["cluster"], "gpus": nproc}
    return out


def _size_name(params: float) -> str:
    """0.42M, 3.5B: a parameter count as the plan names its stages."""
    return f"{params / 1e9:.1f}B" if params >= 1e9 else f"{params / 1e6:.2f}M"
