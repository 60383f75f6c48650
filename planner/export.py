"""Hand a plan to other tools: Megatron-LM arguments, torchtitan job configs, SLURM scripts.

Conventions: Megatron-LM's arguments at a named commit (data-parallel size is derived from the
world size), torchtitan's TOML job config up to v0.2.x (the product of the degrees is the world
size), and a SLURM batch script that starts flmplan's runtime under torchrun on every node.
"""

from __future__ import annotations

from pathlib import Path

from planner.errors import FlmplanError
from planner.plan import MIN_LR_FRACTION, Plan, stage_warmup_steps

TARGETS = ("megatron", "torchtitan", "slurm")


# Megatron-LM's arguments as of this commit of NVIDIA/Megatron-LM; tests/data/megatron_args.json
# holds that commit's parser (every option, its arity and choices), which the tests parse the
# exported arguments with.
MEGATRON_COMMIT = "d98e8a64ddf34856e74b24714e3bedb2f5a39553"


def checkpoint_every_steps(plan: Plan, k: int) -> int:
    """Steps between checkpoints: the simulation's interval (Daly's optimum, or the one given),
    in this stage's step time; 1,000 steps when the plan was not simulated."""
    interval_min = (plan.simulation or {}).get("checkpoint_interval_min")
    if not interval_min:
        return 1000
    return max(1, round(interval_min * 60 / plan.stages[k].predicted.step_s))


def megatron_args(plan: Plan, k: int, rope_for_xpos: bool = False) -> str:
    """One stage as Megatron-LM arguments that mean what the plan means, or a refusal naming the
    field Megatron-LM cannot express (`rope_for_xpos`: the user accepts plain rotary for xPos)."""
    st = plan.stages[k]
    m, lay = st.model, st.layout
    where = f"Stage {k + 1} ({st.name})"
    if m.position == "xpos" and not rope_for_xpos:
        raise FlmplanError(f"{where} uses xPos (model.position), which Megatron-LM does not have; pass "
                           "--rope-for-xpos to export it as plain rotary.")
    notes = []
    args = [
        f"--num-layers {m.layers}", f"--hidden-size {m.hidden}", f"--num-attention-heads {m.heads}",
        f"--ffn-hidden-size {m.ffn}", f"--seq-length {m.seq}", f"--max-position-embeddings {m.seq}",
        "--position-embedding-type rope",
        f"--tensor-model-parallel-size {lay.tp}", f"--pipeline-model-parallel-size {lay.pp}",
        f"--micro-batch-size {lay.micro_batch}", f"--global-batch-size {lay.global_batch}",
        *{"bf16": ["--bf16"], "fp16": ["--fp16"]}.get(plan.dtype, []),
        f"--attention-backend {'flash' if lay.attention == 'flash' else 'unfused'}",
        # The stage's own schedule (planner/plan.py): warm-up, then cosine to 10 % of its peak.
        f"--train-iters {st.steps}", f"--lr {st.lr:g}", f"--min-lr {st.lr * MIN_LR_FRACTION:g}",
        "--lr-decay-style cosine", f"--lr-warmup-iters {stage_warmup_steps(st)}", f"--lr-decay-iters {st.steps}",
        f"--save checkpoints/stage{k + 1}", f"--load checkpoints/stage{k + 1}",
        f"--save-interval {checkpoint_every_steps(plan, k)}",
    ]
    if st.growth:
        # First start: no checkpoint in --load yet, so Megatron-LM loads the grown one as a
        # pretrained checkpoint (weights only, iteration 0); a restart resumes from --load.
        args.append(f"--pretrained-checkpoint checkpoints/stage{k + 1}-grown")
        notes.append(f"Grown from stage {st.growth.from_stage + 1} by MSG; Megatron-LM has no MSG operator: write "
                     f"the grown weights to checkpoints/stage{k + 1}-grown (`flmplan run` grows them itself). "
                     "Megatron-LM starts the optimizer afresh there; flmplan's runtime carries Adam's moments across "
                     "a growth.")
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
        # score matrix to recompute). Megatron-LM's modules: `layernorm` is the first; it has no
        # module for a dense MLP's activation alone, so `mlp` recomputes the whole MLP.
        args += ["--recompute-granularity selective", "--recompute-modules layernorm mlp"]
        notes.append("Selective recompute: Megatron-LM recomputes the whole MLP (its two GEMMs too) where the plan "
                     "recomputes only its activation: memory at or under the plan's, steps slower than predicted.")
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


def torchtitan_toml(plan: Plan, k: int) -> str:
    st = plan.stages[k]
    lay = st.layout
    replicate, shard = (1, lay.dp) if lay.zero == 3 else (lay.dp, 1)
    schedule = "Interleaved1F1B" if lay.interleave > 1 else "1F1B"
    mode = {"none": "none", "selective": "selective", "full": "full"}[lay.recompute]
    return (
        f"# Stage {k + 1} ({st.name}) of plan '{plan.name}': torchtitan job config (v0.2.x keys)\n"
        f"[job]\ndescription = \"flmplan stage {k + 1}: {st.name}\"\n\n"
        f"[model]\nname = \"llama3\"\nflavor = \"flmplan-stage{k + 1}\""
        f"  # {st.model.layers} layers × {st.model.hidden}, {st.model.heads} heads, ffn {st.model.ffn}\n\n"
        f"[training]\nlocal_batch_size = {lay.global_batch // lay.dp}\nglobal_batch_size = {lay.global_batch}\n"
        f"seq_len = {st.model.seq}\nsteps = {st.steps}\nmixed_precision_param = \"bfloat16\"\n\n"
        f"[optimizer]\nname = \"AdamW\"\nlr = {st.lr:g}\n\n"
        f"[parallelism]\ndata_parallel_replicate_degree = {replicate}\ndata_parallel_shard_degree = {shard}\n"
        f"tensor_parallel_degree = {lay.tp}\npipeline_parallel_degree = {lay.pp}\n"
        f"pipeline_parallel_schedule = \"{schedule}\"\npipeline_parallel_microbatch_size = {lay.micro_batch}\n"
        f"context_parallel_degree = 1\nenable_async_tensor_parallel = false\n\n"
        f"[activation_checkpoint]\nmode = \"{mode}\"\n\n[checkpoint]\nenable_checkpoint = true\ninterval = 1000\n"
    )


def slurm_script(plan: Plan, plan_path: str = "plan.json") -> str:
    """A batch script that runs the plan as simulated: the spare nodes the simulation bills are
    requested beside the working ones, checkpoints come at the simulation's interval, and the
    script refuses to start without the training data."""
    per_node = min(plan.cluster.gpus, plan.cluster.gpus_per_node)
    nodes = max(1, plan.cluster.gpus // plan.cluster.gpus_per_node)
    spares = int((plan.simulation or {}).get("spare_nodes", 0))
    every = min(checkpoint_every_steps(plan, k) for k in range(len(plan.stages)))
    out = f"runs/{plan.name.replace(' ', '-')}"
    return f"""#!/bin/bash
# flmplan: {plan.name}, {len(plan.stages)} stages on {plan.cluster.gpus} × {plan.cluster.gpu}
# {nodes} working nodes and {spares} spare (as the run simulation bills them): a restart after a node
# failure runs on the healthy ones. Checkpoints every {every} steps: the simulation's interval in the
# slowest stage's steps (the faster stages save more often). Usage: DATA=/path/to/tokens.bin sbatch flmplan.sbatch
#SBATCH --job-name=flmplan
#SBATCH --nodes={nodes + spares}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={per_node}
#SBATCH --time={_slurm_time(plan.totals.days * 1.25)}
#SBATCH --requeue
set -euo pipefail
: "${{DATA:?set DATA to the training data (a token .bin, or text files) before sbatch}}"
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1   # reliable torchrun restarts (pytorch#135712)
export OMP_NUM_THREADS=1
# Every stage runs in order; a restarted job resumes from the newest good checkpoint in {out}.
srun --nodes={nodes} --ntasks={nodes} torchrun --nnodes={nodes} --nproc-per-node={per_node} --max-restarts=3 \\
  --rdzv-backend=c10d --rdzv-endpoint="$head_node:29500" --rdzv-id="$SLURM_JOB_ID" \\
  -m runtime.train --plan {plan_path} --out {out} --data "$DATA" --checkpoint-every {every}
"""


def _slurm_time(days: float) -> str:
    hours = int(days * 24) + 1
    return f"{hours // 24}-{hours % 24:02d}:00:00"


def export_plan(plan: Plan, target: str, out_dir: Path, plan_path: str = "plan.json",
                rope_for_xpos: bool = False) -> list[Path]:
    """Every file is made (or refused) before any is written."""
    if target not in TARGETS:
        raise FlmplanError(f"--to must be one of {', '.join(TARGETS)}, got {target!r}.")
    if target == "slurm":
        files = {"flmplan.sbatch": slurm_script(plan, plan_path)}
    elif target == "megatron":
        files = {f"stage{k + 1}.megatron.args": megatron_args(plan, k, rope_for_xpos) for k in range(len(plan.stages))}
    else:
        files = {f"stage{k + 1}.torchtitan.toml": torchtitan_toml(plan, k) for k in range(len(plan.stages))}
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        path = out_dir / name
        path.write_text(text)
        written.append(path)
    return written
