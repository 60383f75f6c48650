"""Hand a plan to other tools: Megatron-LM arguments, torchtitan job configs, SLURM scripts.

Conventions: Megatron-LM's argument names (data-parallel size is derived from the world
size), torchtitan's TOML job config up to v0.2.x (the product of the degrees is the world
size), and a SLURM batch script that starts flmplan's runtime under torchrun on every node.
"""

from __future__ import annotations

from pathlib import Path

from planner.errors import FlmplanError
from planner.plan import Plan

TARGETS = ("megatron", "torchtitan", "slurm")


def megatron_args(plan: Plan, k: int) -> str:
    st = plan.stages[k]
    m, lay = st.model, st.layout
    args = [
        f"--num-layers {m.layers}", f"--hidden-size {m.hidden}", f"--num-attention-heads {m.heads}",
        f"--ffn-hidden-size {m.ffn}", f"--seq-length {m.seq}", f"--max-position-embeddings {m.seq}",
        f"--tensor-model-parallel-size {lay.tp}", f"--pipeline-model-parallel-size {lay.pp}",
        f"--micro-batch-size {lay.micro_batch}", f"--global-batch-size {lay.global_batch}",
        f"--train-iters {st.steps}", f"--lr {st.lr:g}", "--bf16" if plan.dtype == "bf16" else "--fp16",
        "--position-embedding-type rope", "--save-interval 1000",
    ]
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
    elif lay.recompute == "selective":
        args.append("--recompute-granularity selective")
    if lay.zero >= 1:
        args.append("--use-distributed-optimizer")
    if lay.attention == "flash":
        args.append("--use-flash-attn")
    header = f"# Stage {k + 1} ({st.name}): Megatron-LM arguments; world size {lay.tp * lay.pp * lay.dp}\n"
    if m.position == "xpos":
        header += "# model.position = xpos: Megatron-LM has no xPos; these arguments train plain rotary.\n"
    if st.growth:
        header += (f"# Grown from stage {st.growth.from_stage + 1} by MSG ({st.growth.dims}); Megatron-LM has no MSG "
                   "operator: grow the checkpoint with `flmplan run` or your own converter first.\n")
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
    nodes = max(1, plan.cluster.gpus // plan.cluster.gpus_per_node)
    per_node = min(plan.cluster.gpus, plan.cluster.gpus_per_node)
    return f"""#!/bin/bash
# flmplan: {plan.name}, {len(plan.stages)} stages on {plan.cluster.gpus} × {plan.cluster.gpu}
#SBATCH --job-name=flmplan
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={per_node}
#SBATCH --time={_slurm_time(plan.totals.days * 1.25)}
#SBATCH --requeue
set -euo pipefail
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1   # reliable torchrun restarts (pytorch#135712)
# Every stage runs in order; a restarted job resumes from the newest good checkpoint in runs/.
srun torchrun --nnodes={nodes} --nproc-per-node={per_node} --max-restarts=3 \\
  --rdzv-backend=c10d --rdzv-endpoint="$head_node:29500" --rdzv-id="$SLURM_JOB_ID" \\
  -m runtime.train --plan {plan_path} --out runs/{plan.name.replace(' ', '-')}
"""


def _slurm_time(days: float) -> str:
    hours = int(days * 24) + 1
    return f"{hours // 24}-{hours % 24:02d}:00:00"


def export_plan(plan: Plan, target: str, out_dir: Path, plan_path: str = "plan.json") -> list[Path]:
    if target not in TARGETS:
        raise FlmplanError(f"--to must be one of {', '.join(TARGETS)}, got {target!r}.")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if target == "slurm":
        path = out_dir / "flmplan.sbatch"
        path.write_text(slurm_script(plan, plan_path))
        return [path]
    for k, _st in enumerate(plan.stages):
        if target == "megatron":
            path, text = out_dir / f"stage{k + 1}.megatron.args", megatron_args(plan, k)
        else:
            path, text = out_dir / f"stage{k + 1}.torchtitan.toml", torchtitan_toml(plan, k)
        path.write_text(text)
        written.append(path)
    return written

