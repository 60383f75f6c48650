"""Hand a plan to other tools: Megatron-LM arguments, torchtitan job configs, SLURM scripts.

Conventions: Megatron-LM's arguments at a named commit (data-parallel size is derived from the
world size), a torchtitan 0.3.0 config registry (a Python module, one config function per stage;
the product of the degrees is the world size), and a SLURM batch script that starts flmplan's
runtime under torchrun on every node. What a tool cannot express is refused with the field
named or, with `nearest`, replaced by the nearest thing it has and said so in the file.
"""

from __future__ import annotations

import json
import shlex
import textwrap
from importlib import resources
from pathlib import Path

from planner.errors import FlmplanError
from planner.optimizer import ADAM_BETAS, ADAM_EPS, DROPOUT, MAX_GRAD_NORM, WEIGHT_DECAY
from planner.plan import MIN_LR_FRACTION, Plan, stage_warmup_steps

TARGETS = ("megatron", "torchtitan", "slurm")


# Megatron-LM's arguments as of this commit of NVIDIA/Megatron-LM; tests/data/megatron_args.json
# holds that commit's parser (every option, its arity and choices), which the tests parse the
# exported arguments with.
MEGATRON_COMMIT = "d98e8a64ddf34856e74b24714e3bedb2f5a39553"


# How the exports name each position encoding a tool may lack (planner/specs.py Position).
_POSITION_NAMES = {"xpos": "xPos", "learned": "learned absolute positions"}


def _joined(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class _Missing:
    """The plan fields of one stage that a tool cannot express, gathered so that a refusal names all of
    them at once (unless the user accepts the nearest the tool has, `--nearest`)."""

    def __init__(self, where: str, tool: str, nearest: bool) -> None:
        self.where, self.tool, self.nearest = where, tool, nearest
        self.items: list[tuple[str, str]] = []

    def add(self, what: str, instead: str) -> None:
        self.items.append((what, instead))

    def refuse(self) -> None:
        if self.items and not self.nearest:
            raise _Gaps(self)


class _Gaps(FlmplanError):
    """A refusal of one stage's fields; `every_stage` joins those of all stages into one sentence."""

    def __init__(self, missing: _Missing) -> None:
        self.missing = missing
        super().__init__(f"{missing.where} {_joined([w for w, _ in missing.items])}, which {missing.tool} does not "
                         f"have; pass --nearest to export {_joined([i for _, i in missing.items])} instead.")


def every_stage(plan: Plan, build) -> list:
    """build(k) for every stage, or one refusal that names every field of every stage the tool lacks."""
    out, gaps = [], []
    for k in range(len(plan.stages)):
        try:
            out.append(build(k))
        except _Gaps as gap:
            gaps.append(gap.missing)
    if len(gaps) == 1:
        raise _Gaps(gaps[0])
    if gaps:
        insteads = list(dict.fromkeys(i for g in gaps for _, i in g.items))
        parts = "; ".join(f"{g.where[0].lower()}{g.where[1:]} {_joined([w for w, _ in g.items])}" for g in gaps)
        raise FlmplanError(f"{gaps[0].tool} does not have what this plan uses: {parts}; pass --nearest to export "
                           f"{_joined(insteads)} instead.")
    return out


def _mup_nearest(st, missing: _Missing) -> list[str]:
    """µP (per-group learning rates and multipliers) has no switch in either tool."""
    if st.parametrization.kind != "mup":
        return []
    missing.add("is parametrized by µP (parametrization.kind)", "standard parametrization")
    return [f"Standard parametrization in place of µP (base width {st.parametrization.base_width}): the learning "
            f"rate {st.lr:g} was tuned for µP and may not suit SP at this width."]


def _language_steps(st, missing: _Missing, notes: list[str]) -> int:
    """The steps a tool trains for: the stage's, or with FreeLM's teacher steps left out (neither tool has
    FreeLM's teacher signal), said in the notes."""
    if st.objective.kind != "freelm":
        return st.steps
    teacher = st.objective.teacher_steps(st.steps)
    missing.add(f"trains FreeLM's teacher signal every {st.objective.teacher_every} steps (objective.kind)",
                "language modelling alone")
    notes.append(f"Language modelling alone where the plan trains FreeLM: its {teacher:,} teacher steps (every "
                 f"{st.objective.teacher_every}th) are left out, so {st.steps - teacher:,} steps train the plan's "
                 "language tokens and no more; the teacher head and its propositions are not exported.")
    return st.steps - teacher


def _data_restart_note(k: int, tool: str, how: str) -> list[str]:
    """What a stage after the first reads: flmplan's runtime carries the data position across a growth;
    the tools start each stage's stream afresh."""
    if k == 0:
        return []
    return [f"Data: {tool} starts this stage's data stream afresh; flmplan's runtime would carry on where stage "
            f"{k} stopped. {how}"]


def checkpoint_every_steps(plan: Plan, k: int) -> int:
    """Steps between checkpoints: the simulation's interval (Daly's optimum, or the one given),
    in this stage's step time; 1,000 steps when the plan was not simulated."""
    interval_min = (plan.simulation or {}).get("checkpoint_interval_min")
    if not interval_min:
        return 1000
    return max(1, round(interval_min * 60 / plan.stages[k].predicted.step_s))


def grown_norm_eps(plan: Plan, k: int, first: float) -> float:
    """Stage k's norm ε in a tool's export, from the first stage's `first`: `flmplan grow` widens a residual
    stream so that its variance (LayerNorm) or mean square (RMSNorm) over d_new dimensions is d_old/d_new
    of the old one, and an ε scaled with it keeps the normalised values exact (runtime/grow_targets.py)."""
    return first * plan.stages[0].model.hidden / plan.stages[k].model.hidden


MEGATRON_NORM_EPS = 1e-5      # Megatron-LM's --norm-epsilon default, the first stage's


def megatron_shape(plan: Plan, k: int) -> dict:
    """Stage k's decoder as Megatron-LM builds it from the exported arguments. `flmplan grow --to megatron`
    grows between these shapes."""
    st = plan.stages[k]
    m = st.model
    # Megatron-LM pads the vocabulary to a multiple of --make-vocab-size-divisible-by (1 in the arguments
    # for a prepared corpus, 128 by default) times the tensor-parallel degree (`_vocab_size_with_padding`).
    multiple = (1 if plan.data else 128) * st.layout.tp
    return {"layers": m.layers, "dim": m.hidden, "heads": m.heads, "kv_heads": m.n_kv_heads, "ffn": m.ffn,
            "vocab": -(-m.vocab // multiple) * multiple, "seq": m.seq, "tied": m.tied_embeddings,
            "swiglu": m.activation == "swiglu", "learned_positions": m.position == "learned",
            "norm_eps": grown_norm_eps(plan, k, MEGATRON_NORM_EPS)}


def megatron_args(plan: Plan, k: int, nearest: bool = False) -> str:
    """One stage as Megatron-LM arguments that mean what the plan means, or a refusal naming the
    field Megatron-LM cannot express (`nearest`: the user accepts plain rotary for xPos)."""
    st = plan.stages[k]
    m, lay = st.model, st.layout
    where = f"Stage {k + 1} ({st.name})"
    missing = _Missing(where, "Megatron-LM", nearest)
    if m.position == "xpos":
        missing.add("uses xPos (model.position)", "plain rotary")
    notes = _mup_nearest(st, missing)
    steps = _language_steps(st, missing, notes)
    missing.refuse()
    args = [
        f"--num-layers {m.layers}", f"--hidden-size {m.hidden}", f"--num-attention-heads {m.heads}",
        f"--ffn-hidden-size {m.ffn}", f"--seq-length {m.seq}", f"--max-position-embeddings {m.seq}",
        f"--position-embedding-type {'learned_absolute' if m.position == 'learned' else 'rope'}",
        f"--tensor-model-parallel-size {lay.tp}", f"--pipeline-model-parallel-size {lay.pp}",
        f"--micro-batch-size {lay.micro_batch}", f"--global-batch-size {lay.global_batch}",
        *{"bf16": ["--bf16"], "fp16": ["--fp16"]}.get(plan.dtype, []),
        f"--attention-backend {'flash' if lay.attention == 'flash' else 'unfused'}",
        # The stage's own schedule (planner/plan.py): warm-up, then cosine to 10 % of its peak.
        f"--train-iters {steps}", f"--lr {st.lr:g}", f"--min-lr {st.lr * MIN_LR_FRACTION:g}",
        "--lr-decay-style cosine", f"--lr-warmup-iters {stage_warmup_steps(st)}", f"--lr-decay-iters {steps}",
        # A seed per stage: Megatron-LM shuffles its samples by it, so a stage does not re-read the
        # previous stage's samples in their order (its stream restarts at a growth: see the notes).
        f"--seed {1234 + k}",
        f"--save checkpoints/stage{k + 1}", f"--load checkpoints/stage{k + 1}",
        f"--save-interval {checkpoint_every_steps(plan, k)}",
        # LayerNorm's ε, scaled down with the width from Megatron-LM's default as `flmplan grow` needs.
        f"--norm-epsilon {grown_norm_eps(plan, k, MEGATRON_NORM_EPS)!r}",
    ]
    if st.growth:
        # First start: no checkpoint in --load yet, so Megatron-LM loads the grown one as a
        # pretrained checkpoint (weights only, iteration 0); a restart resumes from --load.
        args.append(f"--pretrained-checkpoint checkpoints/stage{k + 1}-grown")
        j = st.growth.from_stage + 1
        grow = (f"flmplan grow checkpoints/stage{j} --plan PLAN --stage {k + 1} --to megatron "
                f"--out checkpoints/stage{k + 1}-grown")
        notes.append(f"Grown from stage {j} by MSG in the plan; Megatron-LM has no MSG masks. `{grow}` "
                     f"writes these first weights from stage {j}'s last checkpoint, growing without masks and keeping "
                     "the function: new blocks, heads and neurons add nothing until trained (zero output projections), "
                     "and new hidden dimensions carry the mean of the old ones (LEMON's average expansion), with the "
                     "LayerNorm gains and this stage's --norm-epsilon rescaled to match. Megatron-LM starts the "
                     "optimizer afresh there; flmplan's runtime carries Adam's moments across a growth.")
        if lay.zero >= 2:
            notes.append("The grown checkpoint is in torch_dist format, which Megatron-LM detects when it loads one; "
                         "loading it into Megatron-FSDP (this stage's --ckpt-format fsdp_dtensor) was not checked "
                         "(megatron-core's FSDP needs CUDA).")
    args += _megatron_data_args(plan, notes)
    notes += _data_restart_note(k, "Megatron-LM", (
        "A grown checkpoint loads as a pretrained one, whose consumed-samples count is zero, and the dataset is "
        "built for this stage's iterations alone: no argument offsets it. This stage's own --seed shuffles the "
        "corpus anew instead, so it draws the documents in a new random order (some the previous stages read) "
        "rather than re-reading stage 1's first ones."))
    # flmplan's optimizer, every setting written (Megatron-LM's defaults differ: β2 0.999, weight decay 0.01,
    # dropout 0.1). Megatron-LM leaves biases and norms undecayed as the runtime does, but decays the embedding.
    args += ["--optimizer adam", f"--adam-beta1 {ADAM_BETAS[0]!r}", f"--adam-beta2 {ADAM_BETAS[1]!r}",
             f"--adam-eps {ADAM_EPS!r}", f"--weight-decay {WEIGHT_DECAY!r}", f"--clip-grad {MAX_GRAD_NORM!r}",
             f"--hidden-dropout {DROPOUT!r}", f"--attention-dropout {DROPOUT!r}"]
    notes.append("Megatron-LM decays the embedding's weights too; flmplan's runtime does not (planner/optimizer.py).")
    if m.kv_heads:
        args += ["--group-query-attention", f"--num-query-groups {m.kv_heads}"]
    if m.activation == "swiglu":
        args.append("--swiglu")
    if not m.tied_embeddings:
        args.append("--untie-embeddings-and-output-weights")
    if lay.interleave > 1:
        args.append(f"--num-layers-per-virtual-pipeline-stage {m.layers // (lay.pp * lay.interleave)}")
    if lay.sequence_parallel:
        args.append("--sequence-parallel")
    if lay.recompute == "full":
        args += ["--recompute-granularity full", "--recompute-method uniform", "--recompute-num-layers 1"]
    elif lay.recompute == "selective" and lay.attention == "unfused":
        args += ["--recompute-granularity selective", "--recompute-modules core_attn"]
    elif lay.recompute == "selective":
        # The plan recomputes the LayerNorms and the MLP's activation (flash attention keeps no
        # score matrix to recompute). Under Megatron-LM's default Transformer Engine spec the LayerNorm
        # is fused into the next linear layer, so its `layernorm` module recomputes nothing there; it has
        # no module for a dense MLP's activation alone, so `mlp` recomputes the whole MLP.
        args += ["--recompute-granularity selective", "--recompute-modules mlp"]
        notes.append("Selective recompute: Megatron-LM recomputes the whole MLP (its two GEMMs too) where the plan "
                     "recomputes only its activation, and keeps the LayerNorm's output (fused into the next linear "
                     "layer by its default Transformer Engine spec): memory near the plan's, steps slower.")
    if lay.zero >= 2:
        # ZeRO 2 and 3 are Megatron-FSDP's sharding of gradients (and of the weights).
        strategy = "optim_grads_params" if lay.zero == 3 else "optim_grads"
        args += ["--use-megatron-fsdp", f"--data-parallel-sharding-strategy {strategy}", "--ckpt-format fsdp_dtensor"]
    elif lay.zero == 1:
        # Megatron-LM's distributed optimizer shards the optimizer state: ZeRO 1.
        args.append("--use-distributed-optimizer")
    header = f"# {where}: Megatron-LM arguments (checked against NVIDIA/Megatron-LM {MEGATRON_COMMIT[:7]}); "
    header += f"world size {lay.tp * lay.pp * lay.dp}\n"
    if lay.zero >= 2:
        header += "# Launch without CUDA_DEVICE_MAX_CONNECTIONS=1 (Megatron-FSDP refuses it).\n"
    elif lay.tp > 1:
        header += "# Launch with CUDA_DEVICE_MAX_CONNECTIONS=1 (Megatron-LM overlaps tensor-parallel communication).\n"
    if m.position == "xpos":
        notes.append("model.position = xpos: Megatron-LM has no xPos; these arguments train plain rotary.")
    header += "".join(f"# {n}\n" for n in notes)
    return header + " \\\n  ".join(args) + "\n"


def _megatron_data_args(plan: Plan, notes: list[str]) -> list[str]:
    """The plan's corpus as Megatron-LM reads it: the same PREFIX.bin/.idx files (Megatron-LM's own
    indexed dataset) with their weights, all for training, and a vocabulary of the plan's size."""
    if plan.data is None:
        notes.append("No corpus in the plan (`flmplan simulate --data`): add --data-path and a tokenizer.")
        return []
    vocab = plan.stages[0].model.vocab
    pairs = " ".join(f"{s.weight:.6g} {shlex.quote(s.prefix)}" for s in plan.data.sources)
    notes.append("The corpus is tokenized already (flmplan data prepare): NullTokenizer only sizes the vocabulary "
                 f"({vocab:,} with the one Megatron-LM adds for its own end-of-document id, which the default "
                 "masks do not use).")
    return [f"--data-path {pairs}", "--split 100,0,0", "--tokenizer-type NullTokenizer", f"--vocab-size {vocab - 1}",
            "--make-vocab-size-divisible-by 1"]


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
    missing = _Missing(where, "torchtitan", nearest)
    notes += _mup_nearest(st, missing)
    steps = _language_steps(st, missing, notes)
    shape = torchtitan_shape(plan, k)
    ffn = shape["ffn"]
    if m.activation == "gelu":
        missing.add("has a GeLU MLP (model.activation)", "SwiGLU with the same parameters")
        notes.append(f"SwiGLU MLP of width {ffn} in place of the plan's GeLU of width {m.ffn} (the same parameters "
                     f"to {abs(3 * ffn - 2 * m.ffn) / (2 * m.ffn):.2%}).")
    if m.position != "rotary":
        name = _POSITION_NAMES[m.position]
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
    # torchtitan's data parallelism is FSDP2 (or HSDP) whatever the ZeRO stage: ZeRO 3 reshards
    # after forward, ZeRO 1 and 2 keep the gathered weights through backward, and plain data
    # parallelism replicates (shards of one).
    if lay.zero == 0:
        replicate, shard, reshard = lay.dp, 1, "default"
    else:
        replicate, shard, reshard = 1, lay.dp, "always" if lay.zero == 3 else "never"
        if lay.zero < 3:
            notes.append(f"ZeRO {lay.zero} as FSDP that keeps the gathered weights through backward: gradients "
                         "sharded too, so memory at or under the plan's.")
    # torchtitan's local batch is one accumulation step of one data-parallel rank; with pipeline
    # parallelism it is the whole step, split into micro-batches.
    local_batch = lay.global_batch // lay.dp if lay.pp > 1 else lay.micro_batch
    notes += _data_restart_note(k, "torchtitan", (
        "A model-only initial load (initial_load_model_only) restores no dataloader state, and torchtitan's text "
        "datasets read in file order: this stage re-reads the corpus from its first documents. Give it the part "
        "of the corpus the earlier stages did not read (--dataloader.dataset_path), or accept the repeat."))
    if st.growth:
        notes.append(f"Grown from stage {st.growth.from_stage + 1}. torchtitan has no MSG: `flmplan grow "
                     f"STAGE{st.growth.from_stage + 1}_CHECKPOINT --plan PLAN --stage {k + 1} --to torchtitan --out "
                     f"outputs/checkpoint/stage{k + 1}-grown` writes this stage's first weights from the previous "
                     "stage's checkpoint, grown without masks and function-preserving: new blocks, heads and neurons "
                     "with zero-initialised output projections, new residual dimensions at zero with the RMSNorm "
                     "gains scaled by √(old width / new width) and ε by old / new width (this config's norm_eps); "
                     "the loss at the growth equals the previous stage's, with no mask ramp. The optimizer starts "
                     "afresh there.")
    facts = {
        "lr": f"{st.lr:g}", "warmup": stage_warmup_steps(st), "min_lr_factor": MIN_LR_FRACTION, "steps": steps,
        "local_batch": local_batch, "global_batch": lay.global_batch, "seq": m.seq,
        "param_dtype": json.dumps("bfloat16" if plan.dtype == "bf16" else "float32"),
        "replicate": replicate, "shard": shard, "reshard": json.dumps(reshard), "tp": lay.tp,
        "sequence_parallel": lay.sequence_parallel and lay.tp > 1, "pp": lay.pp,
        "layers_per_stage": m.layers // (lay.pp * lay.interleave) if lay.pp > 1 else None,
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


def slurm_script(plan: Plan, plan_path: str = "plan.json", time_limit: str = "2-00:00:00") -> str:
    """A batch script that runs the plan as simulated: the spare nodes the simulation bills are
    requested beside the working ones, each stage checkpoints at the simulated interval in its own
    steps, and the job checkpoints and requeues itself before its time limit runs out (the runtime
    saves the step in flight on SIGTERM and resumes where it was)."""
    per_node = min(plan.cluster.gpus, plan.cluster.gpus_per_node)
    nodes = max(1, plan.cluster.gpus // plan.cluster.gpus_per_node)
    spares = int((plan.simulation or {}).get("spare_nodes", 0))
    every = ",".join(str(checkpoint_every_steps(plan, k)) for k in range(len(plan.stages)))
    out = shlex.quote(f"runs/{plan.name.replace(' ', '-')}")
    split = 'read -ra data_args <<< "$DATA"; data_args=(--data "${data_args[@]}")'
    if plan.data is None:
        usage = "DATA=/path/to/corpus sbatch flmplan.sbatch (prepared corpora, WEIGHT:PREFIX for a mixture)"
        data_check = (': "${DATA:?set DATA to the training data (prepared corpora: PREFIX or WEIGHT:PREFIX ..., '
                      f'or text files) before sbatch}}"\n{split}\n')
    else:
        usage = "sbatch flmplan.sbatch (the plan's corpus; DATA=... trains on another)"
        data_check = ('data_args=()   # the plan names its corpus; DATA (PREFIX or WEIGHT:PREFIX ...) overrides it\n'
                      f'if [[ -n "${{DATA:-}}" ]]; then {split}; fi\n')
    teacher = _slurm_teacher(plan)
    return f"""#!/bin/bash
# flmplan: {plan.name}, {len(plan.stages)} stages on {plan.cluster.gpus} × {plan.cluster.gpu}
# {nodes} working nodes and {spares} spare (as the run simulation bills them). The job survives a node's
# failure (--no-kill): the training step stops, and the script starts it again on {nodes} of the nodes SLURM
# does not report down or draining, a spare taking the failed node's place, up to {spares} time(s); the
# runtime resumes from its newest good checkpoint. Checkpoints every {every} steps, stage by stage (the
# simulation's interval in each stage's step time). The job runs in pieces of at most {time_limit}: five
# minutes before the limit SLURM signals it, the runtime saves the step in flight, and the job requeues
# itself and resumes there. Usage: {usage}
#SBATCH --job-name=flmplan
#SBATCH --nodes={nodes + spares}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={per_node}
#SBATCH --exclusive
#SBATCH --no-kill
#SBATCH --time={time_limit}
#SBATCH --signal=B:TERM@300
#SBATCH --requeue
#SBATCH --open-mode=append
set -euo pipefail
{data_check}{teacher}export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1   # reliable torchrun restarts (pytorch#135712)
export OMP_NUM_THREADS=1
needed={nodes}
spares={spares}

healthy_nodes() {{   # the job's nodes that SLURM does not report down, draining or failing
  local node
  for node in $(scontrol show hostnames "$SLURM_JOB_NODELIST"); do
    if ! scontrol show node "$node" | grep -qE 'State=[A-Z_+]*(DOWN|DRAIN|FAIL|NOT_RESPONDING)'; then
      echo "$node"
    fi
  done
}}

stopping=0
run=""
requeue() {{
  stopping=1
  if [[ -n "$run" ]]; then kill -TERM "$run" 2>/dev/null || true; fi   # the ranks finish their step, save, exit
}}
trap requeue TERM

# Every stage runs in order; a restart resumes from the newest good checkpoint in {out}.
attempt=0
while true; do
  mapfile -t pool < <(healthy_nodes)
  if (( ${{#pool[@]}} < needed )); then
    echo "flmplan: ${{#pool[@]}} healthy nodes of the $needed needed; requeueing" >&2
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  nodes=$(IFS=,; echo "${{pool[*]:0:needed}}")
  srun --nodes="$needed" --ntasks="$needed" --nodelist="$nodes" --kill-on-bad-exit=1 \\
    torchrun --nnodes="$needed" --nproc-per-node={per_node} --max-restarts=3 \\
    --rdzv-backend=c10d --rdzv-endpoint="${{pool[0]}}:29500" --rdzv-id="$SLURM_JOB_ID-$attempt" \\
    -m runtime.train --plan {shlex.quote(plan_path)} --out {out} "${{data_args[@]}}" \\
    "${{teacher_args[@]}}" --checkpoint-every {every} &
  run=$!
  status=0
  wait "$run" || status=$?
  if (( stopping )); then
    wait "$run" || true
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  if (( status == 0 )); then exit 0; fi
  attempt=$((attempt + 1))
  if (( attempt > spares )); then
    echo "flmplan: training stopped (exit $status) after $spares restart(s) on spare nodes" >&2
    exit "$status"
  fi
  echo "flmplan: training stopped (exit $status); restarting on the healthy nodes (restart $attempt of $spares)" >&2
  sleep "${{FLMPLAN_RESTART_WAIT:-90}}"   # time for SLURM to mark an unresponsive node (its SlurmdTimeout)
done
"""


def _slurm_teacher(plan: Plan) -> str:
    """FreeLM's propositions for the runtime: the plan's teacher_data, TEACHER_DATA overriding it, or
    TEACHER_DATA required where a FreeLM stage names none."""
    stages = plan.freelm_stages()
    if not stages:
        return "teacher_args=()\n"
    if all(plan.stages[k].objective.teacher_data for k in stages):
        return ('teacher_args=()   # the plan names FreeLM\'s propositions; TEACHER_DATA (a JSON-lines file, or iq) '
                'overrides them\nif [[ -n "${TEACHER_DATA:-}" ]]; then teacher_args=(--teacher-data "$TEACHER_DATA"); '
                'fi\n')
    return (': "${TEACHER_DATA:?set TEACHER_DATA to the FreeLM propositions (JSON lines, or iq) before sbatch}"\n'
            'teacher_args=(--teacher-data "$TEACHER_DATA")\n')


# What an export writes beside its files, and the names its files have.
EXPORT_RECORD = "flmplan-export.json"
EXPORT_PATTERNS = {"megatron": "stage*.megatron.args", "torchtitan": f"{TORCHTITAN_MODULE}.py",
                   "slurm": "flmplan.sbatch"}


def export_plan(plan: Plan, target: str, out_dir: Path, plan_path: str = "plan.json",
                nearest: bool = False, time_limit: str = "2-00:00:00") -> list[Path]:
    """Every file is made (or refused) before any is written."""
    if target not in TARGETS:
        raise FlmplanError(f"--to must be one of {', '.join(TARGETS)}, got {target!r}.")
    if target == "slurm":
        files = {"flmplan.sbatch": slurm_script(plan, plan_path, time_limit)}
    elif target == "megatron":
        files = {f"stage{k + 1}.megatron.args": text
                 for k, text in enumerate(every_stage(plan, lambda k: megatron_args(plan, k, nearest)))}
    else:
        files = {f"{TORCHTITAN_MODULE}.py": torchtitan_module(plan, nearest)}
    out_dir.mkdir(parents=True, exist_ok=True)
    # An export replaces the one before it to the same target in the folder: the files of that one that
    # this one does not write go (those the folder's record lists, and any named as that target names
    # its files), so no stale stage is left behind; other files stay.
    record_path = out_dir / EXPORT_RECORD
    record: dict = {}
    if record_path.is_file():
        try:
            record = dict(json.loads(record_path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError):
            record = {}
    previous = set(record.get(target, {}).get("files", [])) if isinstance(record.get(target), dict) else set()
    previous |= {f.name for f in out_dir.glob(EXPORT_PATTERNS[target])}
    for name in sorted(previous - set(files)):
        if "/" not in name and (out_dir / name).is_file():
            (out_dir / name).unlink()
    written = []
    for name, text in files.items():
        path = out_dir / name
        path.write_text(text)
        written.append(path)
    record[target] = {"plan": plan_path, "files": sorted(files)}
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return written
