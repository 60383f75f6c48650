"""A plan as a torchtitan 0.3.0 config registry: a Python module with one config function per stage
(the product of the degrees is the world size)."""

from __future__ import annotations

import json
import textwrap
from importlib import resources

from planner.errors import FlmplanError
from planner.export.stage_facts import (
    POSITION_NAMES,
    Missing,
    checkpoint_every_steps,
    data_restart_note,
    every_stage,
    exported_steps,
    grown_norm_eps,
    mup_nearest,
)
from planner.model.optimizer import ADAM_BETAS, ADAM_EPS, MAX_GRAD_NORM, WEIGHT_DECAY
from planner.plan.plan_file import MIN_LR_FRACTION, Plan, stage_warmup_steps

# The torchtitan release on the package index the export targets. Since 0.3.0 a job config is a
# function in a Python module (a "config registry") chosen with --module/--config and overridden
# with tyro flags. The module is planner/data/torchtitan_registry.py (the model and config
# builders) plus one function per stage; tests/test_cli_simulate.py loads it with torchtitan's
# own ConfigManager.
TORCHTITAN_VERSION = "0.3.0"
TORCHTITAN_MODULE = "flmplan_torchtitan"


TORCHTITAN_NORM_EPS = 1e-5      # torchtitan's RMSNorm default, the first stage's


def _torchtitan_stage(plan: Plan, k: int, nearest: bool) -> str:
    """One stage as a config function, or a refusal naming what torchtitan cannot express."""
    st = plan.stages[k]
    m, lay = st.model, st.layout
    where = f"Stage {k + 1} ({st.name})"
    notes = ["RMSNorm where flmplan's model has LayerNorm (torchtitan's decoders have no LayerNorm)."]
    if plan.dtype == "fp16":
        raise FlmplanError(f"{where} trains in fp16, which torchtitan does not (bf16 or fp32).")
    missing = Missing(where, "torchtitan", nearest)
    notes += mup_nearest(st, missing)
    steps = exported_steps(st, missing, notes)
    shape = torchtitan_shape(plan, k)
    ffn = shape["ffn"]
    if m.activation == "gelu":
        missing.add("has a GeLU MLP (model.activation)", "SwiGLU with the same parameters")
        notes.append(f"SwiGLU MLP of width {ffn} in place of the plan's GeLU of width {m.ffn} (the same parameters "
            f"to {abs(3 * ffn - 2 * m.ffn) / (2 * m.ffn):.2%}).")
    if m.position != "rotary":
        name = POSITION_NAMES[m.position]
        missing.add(f"uses {name} (model.position)", "plain rotary")
        notes.append(f"Plain rotary position embedding in place of {name}.")
    tied = shape["tied"]
    if m.tied_embeddings and not tied:
        missing.add("ties the embedding to the output layer (model.tied_embeddings) under pipeline parallelism",
                    "untied embeddings")
        notes.append(f"Untied embeddings (torchtitan cannot tie them across pipeline stages): "
            f"{m.vocab * m.hidden / 1e9:.2f}B more parameters on the last pipeline stage.")
    missing.refuse()
    if lay.attention == "unfused":
        notes.append("FlexAttention (fused) where the plan costs unfused attention: less memory, other speed.")
    if lay.recompute == "selective":
        notes.append("torchtitan's selective checkpointing also recomputes every second matrix product where the plan "
            "recomputes only norms and activations: memory at or under the plan's, steps slower.")
    replicate, shard, reshard = _torchtitan_data_parallel(lay, notes)
    # torchtitan's local batch is one accumulation step of one data-parallel rank; with pipeline
    # parallelism it is the whole step, split into micro-batches.
    local_batch = lay.global_batch // lay.dp if lay.pp > 1 else lay.micro_batch
    notes += data_restart_note(k, "torchtitan", (
        "A model-only initial load (initial_load_model_only) restores no dataloader state, and torchtitan's text "
        "datasets read in file order: this stage re-reads the corpus from its first documents. Give it the part "
        "of the corpus the earlier stages did not read (--dataloader.dataset_path), or accept the repeat."))
    if st.growth:
        notes.append(_torchtitan_growth_note(st, k))
    ends = 1 if lay.ends_in_split else 0        # the embedding and the output layer, a layer each in the split
    # torchtitan makes ceil((layers + ends) / layers_per_stage) chunks, differing by at most a layer.
    chunks, slots = lay.pp * lay.interleave, m.layers + 2 * ends
    per_chunk = -(-slots // chunks)
    if lay.pp > 1 and -(-slots // per_chunk) != chunks:
        raise FlmplanError(f"{where} splits {m.layers} layers into {chunks} pipeline chunks, which torchtitan's "
                           "layers-per-stage split cannot express; plan it with another pp or interleave.")
    facts = {
        "lr": f"{st.lr:g}", "warmup": stage_warmup_steps(st), "min_lr_factor": MIN_LR_FRACTION, "steps": steps,
        "local_batch": local_batch, "global_batch": lay.global_batch, "seq": m.seq,
        "param_dtype": json.dumps("bfloat16" if plan.dtype == "bf16" else "float32"),
        "replicate": replicate, "shard": shard, "reshard": json.dumps(reshard), "tp": lay.tp,
        "sequence_parallel": lay.sequence_parallel and lay.tp > 1, "pp": lay.pp,
        "layers_per_stage": per_chunk if lay.pp > 1 else None,
        "ends": ends,
        "schedule": json.dumps("Interleaved1F1B" if lay.interleave > 1 else "1F1B"), "microbatch": lay.micro_batch,
        "recompute": json.dumps(lay.recompute), "folder": json.dumps(f"checkpoint/stage{k + 1}"),
        "interval": checkpoint_every_steps(plan, k),
        "initial_load": json.dumps(f"outputs/checkpoint/stage{k + 1}-grown") if st.growth else None,
        "betas": f"({ADAM_BETAS[0]!r}, {ADAM_BETAS[1]!r})", "eps": repr(ADAM_EPS), "weight_decay": repr(WEIGHT_DECAY),
        "max_norm": repr(MAX_GRAD_NORM),
    }
    model = (f"_model({json.dumps(f'flmplan-stage{k + 1}')}, layers={m.layers}, dim={m.hidden}, heads={m.heads}, "
             f"kv_heads={m.kv_heads}, ffn={ffn}, vocab={m.vocab}, seq={m.seq}, tied={tied}, "
             f"norm_eps={shape['norm_eps']!r})")
    paragraphs = [f"{where}: {m.layers} layers × {m.hidden}, {m.heads} heads, {steps:,} steps on {lay.gpus} "
                  f"GPUs ({lay.describe()}).", *notes]
    doc = "\n\n".join(textwrap.fill(p, 100, initial_indent="    ", subsequent_indent="    ") for p in paragraphs)
    args = "".join(f"        {key}={value},\n" for key, value in facts.items())
    return (f'\n\ndef stage{k + 1}() -> Trainer.Config:\n    """\n{doc}\n    """\n'
            f"    return _config(\n        {model},\n{args}    )\n")


def _torchtitan_data_parallel(lay, notes: list[str]) -> tuple[int, int, str]:
    """(replicate, shard, reshard_after_forward) of torchtitan's FSDP2 for the stage's ZeRO stage."""
    # torchtitan's data parallelism is FSDP2 (or HSDP) whatever the ZeRO stage: ZeRO 3 reshards
    # after forward, ZeRO 1 and 2 keep the gathered weights through backward, and plain data
    # parallelism replicates (shards of one).
    if lay.zero == 0:
        return lay.dp, 1, "default"
    if lay.zero < 3:
        notes.append(f"ZeRO {lay.zero} as FSDP that keeps the gathered weights through backward: gradients "
            "sharded too, so memory at or under the plan's.")
    return 1, lay.dp, "always" if lay.zero == 3 else "never"


def _torchtitan_growth_note(st, k: int) -> str:
    """How a grown stage gets its first weights under torchtitan, which has no MSG."""
    return (f"Grown from stage {st.growth.from_stage + 1}. torchtitan has no MSG: `flmplan grow "
            f"STAGE{st.growth.from_stage + 1}_CHECKPOINT --plan PLAN --stage {k + 1} --to torchtitan --out "
            f"outputs/checkpoint/stage{k + 1}-grown` writes this stage's first weights from the previous "
            "stage's checkpoint, grown without masks and function-preserving: new blocks, heads and neurons "
            "with zero-initialised output projections, new residual dimensions at zero with the RMSNorm "
            "gains scaled by √(old width / new width) and ε by old / new width (this config's norm_eps); "
            "the loss at the growth equals the previous stage's, with no mask ramp. The optimizer starts "
            "afresh there.")


def torchtitan_shape(plan: Plan, k: int) -> dict:
    """Stage k's decoder as the torchtitan export builds it (`_model` of the registry): the plan's shape,
    SwiGLU's width for a GeLU MLP and untied embeddings under pipeline parallelism where --nearest
    accepts them. `flmplan grow --to torchtitan` grows between these shapes."""
    st = plan.stages[k]
    m = st.model
    # SwiGLU has three matrices where GeLU has two: 2/3 of the width keeps parameters and FLOPs
    # (to a multiple of 128, so that any tensor-parallel degree divides it).
    ffn = round(2 * m.ffn / 3 / 128) * 128 if m.activation == "gelu" else m.ffn
    return {"layers": m.layers, "dim": m.hidden, "heads": m.heads, "kv_heads": m.n_kv_heads, "ffn": max(ffn, 128),
            "vocab": m.vocab, "seq": m.seq, "tied": m.tied_embeddings and st.layout.pp == 1,
            "norm_eps": grown_norm_eps(plan, k, TORCHTITAN_NORM_EPS)}


def torchtitan_module(plan: Plan, nearest: bool = False) -> str:
    """The plan as a torchtitan config registry (a Python module, one function per stage), or a
    refusal naming the field torchtitan cannot express when `nearest` was not asked for."""
    stages = every_stage(plan, lambda k: _torchtitan_stage(plan, k, nearest))
    per_node = min(plan.cluster.gpus, plan.cluster.gpus_per_node)
    launches = "".join(
        f"    PYTHONPATH=. torchrun --nnodes={max(1, st.layout.gpus // per_node)} "
        f"--nproc-per-node={min(st.layout.gpus, per_node)} [rendezvous flags] -m torchtitan.train "
        f"--module {TORCHTITAN_MODULE} --config stage{k + 1}\n" for k, st in enumerate(plan.stages))
    doc = (f'"""torchtitan {TORCHTITAN_VERSION} job configs for the flmplan plan {plan.name!r}, one function per '
           "growth stage.\n\nWritten by `flmplan export --to torchtitan`. torchtitan reads a job config from a "
           "function in a\nPython module; run the stages in order from the folder holding this file:\n\n"
           f"{launches}\nPut your data and tokenizer on the command line (--dataloader.dataset_path …, "
           f"--hf_assets_path …);\nthe tokenizer's vocabulary must be the plan's {plan.stages[0].model.vocab:,} "
           "tokens. Each stage's docstring lists\nwhere it differs from the plan.\n"
           + _torchtitan_data_note(plan) + '"""\n\n')
    body = resources.files("planner").joinpath("data/torchtitan_registry.py").read_text()
    body = body[body.index('"""', 3) + 3:].lstrip("\n")          # its own docstring is for this project
    return doc + body + "".join(stages)


def _torchtitan_data_note(plan: Plan) -> str:
    """torchtitan 0.3.0 tokenizes text from a Hugging Face dataset as it trains; it has no reader for a
    prepared (Megatron-LM indexed) corpus."""
    if plan.data is None:
        return ""
    text = ("torchtitan cannot read the plan's prepared corpus (" + ", ".join(s.prefix for s in plan.data.sources)
            + ": Megatron-LM indexed datasets): its dataloader tokenizes text from a Hugging Face dataset as it "
            "trains. Give it the text the corpus was prepared from, and the tokenizer it was prepared with "
            "(PREFIX.tokenizer.json, as tokenizer.json in the --hf_assets_path folder), so that the ids are the "
            "same; the mixture's weights have no torchtitan equivalent.")
    return "\n" + textwrap.fill(text, 100) + "\n"
