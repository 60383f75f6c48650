"""Measurements a run takes besides its steps, none of which updates the model: the loss of a fixed
batch on both sides of a growth, FreeLM's teacher signal on held-out propositions, and what each
rank holds. Each takes the run (runtime/training/trainer.py `Run`) it measures."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from runtime import checkpoint
from runtime.data.loader import Sampler
from runtime.objectives import freelm
from runtime.parallel.parallel_model import ParallelModel


def log_state_bytes(run, k: int, pm: ParallelModel, opts: list) -> None:
    """What each rank holds of parameters, gradients and optimizer state, once per stage (after
    its first step, when all three exist): the figures planner/model/memory.py predicts."""
    rows: list = [None] * dist.get_world_size()
    dist.all_gather_object(rows, pm.state_bytes(opts))
    run.log({"event": "state_bytes", "stage": k + 1, "ranks": rows})


def probe_before_growth(run, k: int, finished: Path, sampler: Sampler) -> None:
    """A run stopped between stages lost the fixed-batch loss before growth k: measure it again
    from stage k−1's final checkpoint, so every growth keeps its before/after pair."""
    pm, opts = run.build(k - 1, run.fresh(k - 1, meta=True))
    checkpoint.load(finished, pm.chunks, opts)
    eval_growth(run, k, pm, sampler, "before_growth")


def eval_growth(run, k: int, pm: ParallelModel, sampler: Sampler, when: str) -> None:
    """The loss of a fixed batch just before and just after a growth (nothing is updated)."""
    layout = pm.layout
    probe = Sampler(run.corpus, seq=sampler.seq, seed=run.args.seed + 777)
    x, y = probe.batch(layout.global_batch, pm.dp_rank, layout.dp)
    loss = pm.train_batch(x, y)
    for c in pm.chunks:
        c.zero_grad(set_to_none=True)
    run.log({"event": when, "growth_into_stage": k + 1, "loss": float(loss)})


def eval_teacher(run, k: int, pm: ParallelModel, step: int) -> None:
    """FreeLM's teacher signal on its held-out propositions, per task (nothing is updated): loss and
    accuracy, each task's batches filled by repeating its propositions."""
    gb, per_rank = pm.layout.global_batch, pm.layout.global_batch // pm.layout.dp
    cfg = run.configs[k]
    tasks: dict[str, list] = {}
    for p in run.teacher[k][1]:
        tasks.setdefault(p.task, []).append(p)
    results = {}
    for task, held in sorted(tasks.items()):
        losses, correct = [], []
        for n in range(min(4, -(-len(held) // gb))):
            picked = [held[(n * gb + i) % len(held)] for i in range(gb)]
            x, y = freelm.batch(picked[pm.dp_rank * per_rank:(pm.dp_rank + 1) * per_rank], cfg.seq, cfg.vocab)
            losses.append(pm.train_batch(x, y, "teacher"))
            correct.append(pm.teacher_accuracy)
            for c in pm.chunks:
                c.zero_grad(set_to_none=True)
        results[task] = (float(torch.stack(losses).mean()), float(torch.stack(correct).mean()),
                         min(len(held), len(losses) * gb))        # propositions scored (at most 4 batches)
    n = sum(r[2] for r in results.values())
    run.log({"event": "teacher_eval", "stage": k + 1, "step": step,
              "loss": sum(r[0] * r[2] for r in results.values()) / n,
              "accuracy": sum(r[1] * r[2] for r in results.values()) / n, "propositions": n,
              **({"tasks": {t: {"accuracy": r[1], "loss": r[0], "propositions": r[2]} for t, r in results.items()}}
                 if len(results) > 1 or "" not in results else {})})
