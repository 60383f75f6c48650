"""Run a plan: every stage in order — train its tokens, checkpoint, grow, re-shard, go on.

Launched by torchrun (one machine or many):

    torchrun --standalone --nproc-per-node 4 -m runtime.train --plan plan.json --out runs/x

Rank 0 writes `metrics.jsonl` (keys mirror the plan's `predicted` values: step_s, mfu,
memory_gib_per_gpu, so measured and predicted join on the stage). A killed run started again
with the same command resumes from its newest good checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import time
from pathlib import Path

import torch
import torch.distributed as dist

from planner.specs import Layout
from runtime import checkpoint
from runtime.data import Sampler, load_tokens
from runtime.grow import GrowthState, apply_masks, grow_decoder, grow_optimizer_state
from runtime.model import Decoder, DecoderConfig
from runtime.parallel import ParallelModel, make_mesh, parallelize

WARMUP_STEPS = 10
MIN_LR_FRACTION = 0.1


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up (re-warm after a growth), then cosine decay to 10 % of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def config_of(stage: dict) -> DecoderConfig:
    m = stage["model"]
    return DecoderConfig(layers=m["layers"], hidden=m["hidden"], heads=m["heads"], kv_heads=m.get("kv_heads"),
                         ffn=m["ffn"], vocab=m["vocab"], seq=m["seq"], head_dim=m["hidden"] // m["heads"])


def measured_peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """The device's own matmul rate (what MFU is relative to on a CPU; data-sheet peaks on GPUs
    are in the planner's catalog)."""
    n = 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(3):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 3 * 2 * n**3 / best


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.plan = json.loads(Path(args.plan).read_text())
        from planner.plan import plan_from_dict

        plan_from_dict(self.plan, origin=f"Plan {args.plan}")       # validated, as every plan is
        self.out = Path(args.out)
        self.ckpt_dir = self.out / "checkpoints"
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        self.rank = dist.get_rank()
        if backend == "nccl":
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            self.device = torch.device("cuda", local)
        else:
            self.device = torch.device("cpu")
        tokens, self.data_desc = load_tokens(args.data)
        self.tokens = tokens
        self.peak = measured_peak_flops(self.device, torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        self.metrics = open(self.out / "metrics.jsonl", "a") if self.rank == 0 else None  # noqa: SIM115

    def log(self, record: dict) -> None:
        if self.metrics:
            self.metrics.write(json.dumps(record) + "\n")
            self.metrics.flush()

    def say(self, text: str) -> None:
        if self.rank == 0:
            print(text, flush=True)

    # --- building a stage ------------------------------------------------------
    def build(self, k: int, full: Decoder) -> tuple[ParallelModel, list[torch.optim.Optimizer]]:
        stage = self.plan["stages"][k]
        layout = Layout(**stage["layout"])
        mesh = make_mesh(layout, self.device.type)
        pm = parallelize(full, layout, mesh, self.device, seed=self.args.seed + k)
        optimizers = [torch.optim.AdamW(c.parameters(), lr=stage["lr"], betas=(0.9, 0.95), weight_decay=0.1)
                      for c in pm.chunks]
        return pm, optimizers

    def fresh(self, k: int, meta: bool = False) -> Decoder:
        """Stage k's model, initialised; on the meta device (no memory) when it is to be sharded
        as it is allocated (large models)."""
        torch.manual_seed(self.args.seed + k)
        if meta:
            with torch.device("meta"):
                return Decoder(config_of(self.plan["stages"][k]))
        return Decoder(config_of(self.plan["stages"][k]))

    def on_meta(self, k: int) -> bool:
        """Build on the meta device when the whole model would not be small (params > --meta-above)."""
        from planner.specs import ModelSpec

        m = self.plan["stages"][k]["model"]
        return ModelSpec(**m).params() > self.args.meta_above

    def grown(self, k: int, previous: Path) -> tuple[Decoder, dict, GrowthState]:
        """Load stage k−1's final checkpoint into a plain model on every rank and grow it."""
        old = self.fresh(k - 1)
        opt = torch.optim.AdamW(old.parameters(), lr=1e-3)
        old_state = checkpoint.load_full(previous, old, opt)
        growth = self.plan["stages"][k]["growth"]
        torch.manual_seed(self.args.seed + 1000 + k)
        new, state, name_map = grow_decoder(old, config_of(self.plan["stages"][k]), growth["grow_steps"])
        return new, grow_optimizer_state(old_state, dict(new.named_parameters()), name_map), state

    # --- the run -----------------------------------------------------------------
    def run(self) -> None:
        resume = checkpoint.latest_good(self.ckpt_dir, log=self.say)
        start_stage, start_step, position = 0, 0, 0
        if resume:
            path, manifest = resume
            start_stage, start_step, position = manifest["stage"], manifest["step"], manifest["data_position"]
            if manifest.get("stage_done"):
                start_stage, start_step = start_stage + 1, 0
            self.say(f"resuming from {path.name}: stage {start_stage + 1}, step {start_step}")
        sampler = Sampler(self.tokens, seq=self.plan["stages"][0]["model"]["seq"], seed=self.args.seed,
                          position=position)
        for k in range(start_stage, len(self.plan["stages"])):
            self.run_stage(k, start_step if k == start_stage else 0, sampler, resume)
            resume = None
        dist.barrier()
        if self.rank == 0:
            (self.out / "DONE.json").write_text(json.dumps({"stages": len(self.plan["stages"]),
                                                            "data": self.data_desc}))
            self.say(f"done: {len(self.plan['stages'])} stages; metrics in {self.out / 'metrics.jsonl'}")

    def run_stage(self, k: int, start_step: int, sampler: Sampler, resume) -> None:
        stage = self.plan["stages"][k]
        layout = Layout(**stage["layout"])
        growth: GrowthState | None = None
        grown_state = None
        if resume and start_step > 0:
            pm, opts = self.build(k, self.fresh(k, meta=self.on_meta(k)))
            checkpoint.load(resume[0], pm.chunks, opts)
            if resume[1].get("growth"):
                growth = GrowthState(**resume[1]["growth"])
        elif k == 0:
            pm, opts = self.build(k, self.fresh(k, meta=self.on_meta(k)))
        else:
            previous = checkpoint.latest_good(self.ckpt_dir, log=self.say)
            full, grown_state, growth = self.grown(k, previous[0])
            pm, opts = self.build(k, full)
            for chunk, opt in zip(pm.chunks, opts, strict=True):
                checkpoint.set_full_optimizer_state(chunk, opt, grown_state, stage["lr"])
        steps = stage["steps"]
        warmup = (stage["growth"] or {}).get("lr_rewarm_steps", WARMUP_STEPS) if k else WARMUP_STEPS
        warmup = min(warmup, max(1, steps // 5))
        for chunk in pm.chunks:        # masks sliced to this rank's heads and neurons
            apply_masks(chunk, growth, growth.value(start_step) if growth else 1.0)
        if grown_state is not None:
            self.eval_growth(k, pm, sampler, growth, "after_growth")
        flops_per_token = self.model_flops_per_token(stage)
        self.say(f"stage {k + 1}/{len(self.plan['stages'])} {stage['name']}: {steps} steps, layout "
                 f"tp{layout.tp} pp{layout.pp} dp{layout.dp} (zero {layout.zero}, interleave {layout.interleave})")
        every = self.args.checkpoint_every or max(5, steps // 4)
        for step in range(start_step, steps):
            c = growth.value(step) if growth else 1.0
            for chunk in pm.chunks:
                apply_masks(chunk, growth, c)
            lr = lr_at(step, steps, stage["lr"], warmup)
            for o in opts:
                for g in o.param_groups:
                    g["lr"] = lr
            t0 = time.perf_counter()
            x, y = sampler.batch(layout.global_batch, pm.dp_rank, layout.dp)
            loss = pm.train_batch(x, y)
            norm = pm.clip_grad_norm(1.0)
            for o in opts:
                o.step()
                o.zero_grad(set_to_none=True)
            step_s = time.perf_counter() - t0
            tokens = layout.global_batch * stage["model"]["seq"]
            self.log({"stage": k, "stage_name": stage["name"], "step": step, "loss": float(loss), "lr": lr,
                      "grad_norm": norm, "mask": c, "tokens_per_s": tokens / step_s, "step_s": step_s,
                      "mfu": flops_per_token * tokens / step_s / (self.peak * dist.get_world_size()),
                      "memory_gib_per_gpu": self.memory_gib(), "data_position": sampler.position})
            if self.rank == 0 and (step % max(1, steps // 10) == 0 or step == steps - 1):
                print(f"  stage {k + 1} step {step + 1}/{steps}: loss {float(loss):.4f}, {tokens / step_s:,.0f} "
                      f"tokens/s, mask {c:.2f}", flush=True)
            done = step == steps - 1
            if done or (step + 1) % every == 0:
                self.save(k, step + 1, sampler, pm, opts, growth if c < 1 else None, done)
            kill_at = os.environ.get("FLMPLAN_KILL_AT")     # tests: die here, as a crashed node would
            if kill_at and kill_at == f"{k}:{step + 1}" and self.rank == 0 and not (self.out / "KILLED").exists():
                (self.out / "KILLED").write_text("")
                os.kill(os.getpid(), 9)
        if k + 1 < len(self.plan["stages"]):
            self.eval_growth(k + 1, pm, sampler, growth, "before_growth")

    def eval_growth(self, k: int, pm: ParallelModel, sampler: Sampler, growth, when: str) -> None:
        """The loss of a fixed batch just before and just after a growth (nothing is updated)."""
        layout = pm.layout
        probe = Sampler(self.tokens, seq=sampler.seq, seed=self.args.seed + 777)
        x, y = probe.batch(layout.global_batch, pm.dp_rank, layout.dp)
        loss = pm.train_batch(x, y)
        for c in pm.chunks:
            c.zero_grad(set_to_none=True)
        self.log({"event": when, "growth_into_stage": k, "loss": float(loss)})

    def save(self, k, step, sampler, pm, opts, growth, done) -> None:
        manifest = {"stage": k, "step": step, "stage_done": done, "data_position": sampler.position,
                    "global_step": sum(s["steps"] for s in self.plan["stages"][:k]) + step,
                    "tokens": sampler.position * sampler.seq, "layout": self.plan["stages"][k]["layout"],
                    "model": self.plan["stages"][k]["model"], "growth": growth.to_dict() if growth else None,
                    "rng_state": torch.get_rng_state().tolist()[:64], "seed": self.args.seed}
        checkpoint.save(self.ckpt_dir, f"stage{k}-step{step:07d}", pm.chunks, opts, manifest)

    def model_flops_per_token(self, stage: dict) -> float:
        from planner.flops import model_flops_per_token
        from planner.specs import ModelSpec

        return model_flops_per_token(ModelSpec(**{k: v for k, v in stage["model"].items()}))

    def memory_gib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    def close(self) -> None:
        if self.metrics:
            self.metrics.close()
        dist.barrier()
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Run an flmplan plan under torchrun.")
    ap.add_argument("--plan", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", nargs="*", default=None)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--checkpoint-every", type=int, default=0)
    ap.add_argument("--meta-above", type=float, default=2e8,
                    help="build models with more parameters on the meta device and initialise only the shards")
    args = ap.parse_args(argv)
    if os.environ.get("FLMPLAN_HANG_DUMP_S"):         # debugging aid: stacks of a hung rank
        import faulthandler

        faulthandler.dump_traceback_later(float(os.environ["FLMPLAN_HANG_DUMP_S"]), exit=True)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    run = Run(args)
    try:
        run.run()
    except BaseException:
        # Say what went wrong now: the other ranks may be blocked in a collective.
        import traceback

        traceback.print_exc()
        os._exit(1)
    run.close()


if __name__ == "__main__":
    main()
