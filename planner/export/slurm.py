"""A plan as a SLURM batch script that starts flmplan's runtime under torchrun on every node."""

from __future__ import annotations

import shlex

from planner.export.stage_facts import checkpoint_every_steps
from planner.plan.plan_file import Plan

# The batch script, filled in by slurm_script (str.format: doubled braces are the shell's).
SLURM_TEMPLATE = """#!/bin/bash
# flmplan: {name}, {stages} stages on {gpus} × {gpu}
# {nodes} working nodes and {spares} spare (as the run simulation bills them). The job survives a node's
# failure (--no-kill): the training step stops, and the script starts it again on {nodes} of the nodes SLURM
# does not report down or draining, a spare taking the failed node's place, up to {spares} time(s); the
# runtime resumes from its newest good checkpoint. Checkpoints every {every} steps, stage by stage (the
# simulation's interval in each stage's step time). The job runs in pieces of at most {time_limit}: five
# minutes before the limit SLURM signals it, the runtime saves the step in flight, and the job requeues
# itself and resumes there. Usage: {usage}
#SBATCH --job-name=flmplan
#SBATCH --nodes={nodes_total}
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
    -m runtime.train --plan {plan_path} --out {out} "${{data_args[@]}}" \\
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
    return SLURM_TEMPLATE.format(
        name=plan.name, stages=len(plan.stages), gpus=plan.cluster.gpus, gpu=plan.cluster.gpu, nodes=nodes,
        spares=spares, nodes_total=nodes + spares, every=every, time_limit=time_limit, usage=usage,
        per_node=per_node, data_check=data_check, teacher=teacher, out=out, plan_path=shlex.quote(plan_path))


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
