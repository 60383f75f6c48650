"""Run a plan: every stage in order — train its tokens, checkpoint, grow, re-shard, go on.

Launched by torchrun (one machine or many):

    torchrun --standalone --nproc-per-node 4 -m runtime.train --plan plan.json --out runs/x

Rank 0 writes `metrics.jsonl`: one record per optimizer step (loss, lr, gradient norm, mask,
tokens/s, step time, MFU and HFU against the GPU's dense peak, peak memory of the fullest
rank) with the planner's prediction for the same stage beside it (`predicted_*`), and events
(growth losses, growth memory, each checkpoint's seconds). The step never waits for the GPU:
losses and norms stay on the device and are read every `--log-every` steps, which is also the
window the timings average over (checkpoints and evaluations left out). A killed run started
again with the same command resumes from its newest good checkpoint."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from pathlib import Path

import torch

from planner.errors import FlmplanError
from runtime.parallel.cores import rank_threads
from runtime.training.trainer import ERROR_FILE, PREEMPTED_EXIT, Preempted, Run, checkpoint_interval


def main(argv: list[str] | None = None) -> None:
    # On a CPU mesh DTensor warns, once per rank, that its random ops lack the GPU's offset-based
    # RNG tracker; every rank is seeded alike and the layouts' equivalence tests hold CPU losses
    # equal to 1e-4, so the warning says nothing a user can act on.
    warnings.filterwarnings("ignore", message="DTensor random operators may not have complete support",
                            category=UserWarning)
    ap = argparse.ArgumentParser(description="Run an flmplan plan under torchrun.")
    ap.add_argument("--plan", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", nargs="*", default=None)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--teacher-data", default=None,
                    help="FreeLM's propositions (JSON lines, or iq) for the plan's FreeLM stages, instead of the "
                         "plan's teacher_data")
    ap.add_argument("--checkpoint-every", default="0",
                    help="steps between checkpoints: one number for every stage, or one per stage, comma-separated "
                         "(0: a quarter of the stage, at least 5)")
    ap.add_argument("--from-scratch", action="store_true",
                    help="start over when no checkpoint in --out is usable (by default the run stops)")
    ap.add_argument("--no-checkpoints", action="store_true",
                    help="benchmarks only: write no checkpoint, not even at the end (the run cannot resume "
                         "and a one-stage plan only)")
    ap.add_argument("--log-every", type=int, default=10,
                    help="read losses from the device and write metrics every N steps (the timing window)")
    ap.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None,
                    help="override the plan's dtype (default: the plan's on GPUs, fp32 on CPUs)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile each block (default: on with GPUs, off on CPUs)")
    ap.add_argument("--pin-cores", action=argparse.BooleanOptionalAction, default=True,
                    help="on a CPU, keep each rank's computing thread on its own share of the cores")
    ap.add_argument("--meta-above", type=float, default=2e8,
                    help="build models with more parameters on the meta device and initialise only the shards")
    args = ap.parse_args(argv)
    try:
        checkpoint_interval(args.checkpoint_every, 0)
    except ValueError:
        ap.error(f"--checkpoint-every takes whole numbers of steps, comma-separated; got {args.checkpoint_every!r}")
    if args.no_checkpoints and len(json.loads(Path(args.plan).read_text()).get("stages", [])) > 1:
        ap.error("--no-checkpoints runs one-stage plans only: a growth reads the previous stage's checkpoint")
    if os.environ.get("FLMPLAN_HANG_DUMP_S"):         # debugging aid: stacks of a hung rank
        import faulthandler

        faulthandler.dump_traceback_later(float(os.environ["FLMPLAN_HANG_DUMP_S"]), exit=True)
    torch.set_num_threads(rank_threads(int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    try:
        run = Run(args)
        run.run()
    except Preempted:
        run.close()
        sys.exit(PREEMPTED_EXIT)
    except FlmplanError as err:
        # A problem a person must fix (bad data, an unusable checkpoint): one sentence, once, and in
        # the run folder for `flmplan run` to report instead of advising a resume that cannot help.
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"Error: {err}", file=sys.stderr, flush=True)
            with contextlib.suppress(OSError):
                Path(args.out).mkdir(parents=True, exist_ok=True)
                (Path(args.out) / ERROR_FILE).write_text(f"{err}\n")
        os._exit(2)
    except BaseException:
        # Say what went wrong now: the other ranks may be blocked in a collective.
        import traceback

        traceback.print_exc()
        os._exit(1)
    run.close()


if __name__ == "__main__":
    main()
