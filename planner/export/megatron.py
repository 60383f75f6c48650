"""A plan as Megatron-LM's arguments, one file per stage, at a named commit (data-parallel size is
derived from the world size)."""

from __future__ import annotations

import shlex

from planner.export.stage_facts import (
    Missing,
    checkpoint_every_steps,
    data_restart_note,
    exported_steps,
    grown_norm_eps,
    mup_nearest,
)
from planner.model.optimizer import ADAM_BETAS, ADAM_EPS, DROPOUT, MAX_GRAD_NORM, WEIGHT_DECAY
from planner.plan.plan_file import MIN_LR_FRACTION, Plan, stage_warmup_steps

# Megatron-LM's arguments as of this commit of NVIDIA/Megatron-LM; tests/data/megatron_args.json
# holds that commit's parser (every option, its arity and choices), which the tests parse the
# exported arguments with.
MEGATRON_COMMIT = "d98e8a64ddf34856e74b24714e3bedb2f5a39553"


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
    missing = Missing(where, "Megatron-LM", nearest)
    if m.position == "xpos":
        missing.add("uses xPos (model.position)", "plain rotary")
    notes = mup_nearest(st, missing)
    steps = exported_steps(st, missing, notes)
    missing.refuse()
    args = [
        f"--num-layers {m.layers}", f"--hidden-size {m.hidden}", f"--num-attention-heads {m.heads}",
        f"--ffn-hidden-size {m.ffn}", f"--seq-length {m.seq}", f"--max-position-embeddings {m.seq}",
        f"--position-embedding-type {'learned_absolute' if m.position == 'learned' else 'rope'}",
        f"--tensor-model-parallel-size {lay.tp}", f"--pipeline-model-parallel-size {lay.pp}",
        f"--micro-batch-size {lay.micro_batch}", f"--global-batch-size {lay.global_batch}",
        *{"bf16": ["--bf16"], "fp16": ["--fp16"]}.get(plan.dtype, []),
        f"--attention-backend {'flash' if lay.attention == 'flash' else 'unfused'}",
        # The stage's own schedule (planner/plan/plan_file.py): warm-up, then cosine to 10 % of its peak.
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
    args += _megatron_growth(plan, k, notes)
    args += _megatron_data_args(plan, notes)
    notes += data_restart_note(k, "Megatron-LM", (
        "A grown checkpoint loads as a pretrained one, whose consumed-samples count is zero, and the dataset is "
        "built for this stage's iterations alone: no argument offsets it. This stage's own --seed shuffles the "
        "corpus anew instead, so it draws the documents in a new random order (some the previous stages read) "
        "rather than re-reading stage 1's first ones."))
    # flmplan's optimizer, every setting written (Megatron-LM's defaults differ: β2 0.999, weight decay 0.01,
    # dropout 0.1). Megatron-LM leaves biases and norms undecayed as the runtime does, but decays the embedding.
    args += ["--optimizer adam", f"--adam-beta1 {ADAM_BETAS[0]!r}", f"--adam-beta2 {ADAM_BETAS[1]!r}",
             f"--adam-eps {ADAM_EPS!r}", f"--weight-decay {WEIGHT_DECAY!r}", f"--clip-grad {MAX_GRAD_NORM!r}",
             f"--hidden-dropout {DROPOUT!r}", f"--attention-dropout {DROPOUT!r}"]
    notes.append("Megatron-LM decays the embedding's weights too; flmplan's runtime does not "
                 "(planner/model/optimizer.py).")
    args += _megatron_features(st, notes)
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


def _megatron_growth(plan: Plan, k: int, notes: list[str]) -> list[str]:
    """A grown stage's first start: the weights `flmplan grow` writes, loaded as a pretrained checkpoint."""
    st, args = plan.stages[k], []
    lay = st.layout
    if not st.growth:
        return args
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
    return args


def _megatron_features(st, notes: list[str]) -> list[str]:
    """The model's and layout's features as Megatron-LM's switches: attention groups, SwiGLU, untied
    output, interleaving, sequence parallelism, recompute, and the optimizer's sharding (ZeRO)."""
    m, lay, args = st.model, st.layout, []
    if m.kv_heads:
        args += ["--group-query-attention", f"--num-query-groups {m.kv_heads}"]
    if m.activation == "swiglu":
        args.append("--swiglu")
    if not m.tied_embeddings:
        args.append("--untie-embeddings-and-output-weights")
    slots = m.layers + (2 if lay.ends_in_split else 0)      # the ends count as a layer each in the split
    if lay.ends_in_split:
        args += ["--account-for-embedding-in-pipeline-split", "--account-for-loss-in-pipeline-split"]
    if lay.interleave > 1:
        args.append(f"--num-layers-per-virtual-pipeline-stage {slots // (lay.pp * lay.interleave)}")
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
    return args


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
