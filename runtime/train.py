"""Run a plan: every stage in order — train its tokens, checkpoint, grow, re-shard, go on.

Launched by torchrun (one machine or many):

    torchrun --standalone --nproc-per-node 4 -m runtime.train --plan plan.json --out runs/x

Rank 0 writes `metrics.jsonl`: one record per optimizer step (loss, lr, gradient norm, mask,
tokens/s, step time, MFU and HFU against the GPU's dense peak, peak memory of the fullest
rank) with the planner's prediction for the same stage beside it (`predicted_*`), and events
(growth losses, growth memory, each checkpoint's seconds). The step never waits for the GPU:
losses and norms stay on the device and are read every `--log-every` steps, which is also the
window the timings average over (checkpoints and evaluations left out). A killed run started
again with the same command resumes from its newest good checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import signal
import sys
import time
import warnings
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from planner.errors import FlmplanError
from planner.flops import hardware_flops_per_token, model_flops_per_token
from planner.optimizer import MAX_GRAD_NORM
from planner.plan import MIN_LR_FRACTION, PlanParametrization, stage_warmup_steps
from planner.specs import Layout, ModelSpec
from runtime import checkpoint, freelm
from runtime.data import Corpus, ReadAhead, Sampler, check_corpus, open_corpus, parse_specs, record_run_data
from runtime.freelm import is_teacher_step, teacher_source, teacher_steps_before
from runtime.grow import GrowthState, apply_masks, grow_sharded
from runtime.model import Decoder, DecoderConfig
from runtime.parallel import (
    ParallelModel,
    Precision,
    make_mesh,
    make_optimizer,
    parallelize,
    pin_to_own_cores,
    rank_threads,
    set_lr,
    usable_cores,
)

if TYPE_CHECKING:
    from planner.plan import PlanStage



def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up (re-warm after a growth), then cosine decay to 10 % of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def config_of(model: ModelSpec, parametrization: PlanParametrization | None = None,
              teacher_head: bool = False) -> DecoderConfig:
    """The runtime's model for a plan stage's validated `model` and parametrization: the same fields,
    every one honoured (GeLU or SwiGLU, tied or untied embeddings, grouped-query attention, SP or µP,
    FreeLM's teacher head)."""
    return DecoderConfig(**model.to_dict(), **(parametrization or PlanParametrization()).config_fields(),
                         teacher_head=teacher_head)


def measured_peak_flops(device: torch.device, dtype: torch.dtype, budget_s: float = 0.5) -> float:
    """The device's own matmul rate: the MFU denominator on a CPU, which has no data-sheet peak.
    The best of up to five timings within about budget_s: a CPU without bf16 units takes seconds
    for one call in bf16, and every rank measures it before the first step; a GPU's call is
    microseconds, so there ten calls are timed together, past the launch latency."""
    n, calls = 1024, 1 if device.type == "cpu" else 10
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b                 # warm-up (cuBLAS's handle, the CPU's thread pool), finished before timing
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    best, began = float("inf"), time.perf_counter()
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() - began > budget_s:
            break
    return calls * 2 * n**3 / best


def peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float, str, str | None]:
    """(FLOP/s per device that MFU is relative to, where that number comes from, catalog GPU key).
    A GPU's dense bf16 peak from the data sheet (planner/data/gpus.json), as MFU is defined by
    Chowdhery et al. 2022; a CPU's (or an unlisted GPU's) own measured 1024³ matmul rate."""
    if device.type == "cuda":
        from planner.specs import gpu_for_device

        name = torch.cuda.get_device_name(device)
        gpu = gpu_for_device(name)
        if gpu is not None:
            return gpu.peak_tflops_bf16 * 1e12, f"{gpu.name} dense bf16 peak (data sheet)", gpu.key
        return measured_peak_flops(device, dtype), f"{name}: measured 1024³ matmul (not in the catalog)", None
    return measured_peak_flops(device, dtype), f"this CPU's measured 1024³ {str(dtype)[6:]} matmul", None


def mfu(tokens_per_s: float, flops_per_token: float, peak_per_device: float, devices: int) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the devices' peak (Chowdhery et al. 2022)."""
    return tokens_per_s * flops_per_token / (peak_per_device * devices)


def _status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (Linux), in bytes."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(field))) * 1024


def current_rss() -> int:
    """Resident bytes of this process now, and reset its high-water mark. Freed heap memory is
    handed back to the OS first (glibc's malloc_trim), so what comes after — a growth — cannot
    hide in memory an earlier stage or probe left to the allocator."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    rss = _status_bytes("VmRSS")
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")    # resets VmHWM (Linux ≥ 4.0)
    return rss


def peak_rss() -> int:
    """Peak resident bytes since start, or since current_rss() last reset the mark."""
    return _status_bytes("VmHWM")


ERROR_FILE = "ERROR.txt"   # a worker's one-sentence error, for the launcher to show
PREEMPTED_EXIT = 143      # 128 + SIGTERM: what a scheduler expects of a job it asked to stop


class Preempted(Exception):
    """SIGTERM or SIGINT arrived; the step in flight was finished and saved."""


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        from planner.plan import load_plan

        # Validated: the runtime works from the plan type; --teacher-data names FreeLM's propositions.
        self.plan = load_plan(args.plan).with_teacher_data(teacher_source(args.teacher_data))
        self.configs = [config_of(st.model, st.parametrization, st.objective.kind == "freelm")
                        for st in self.plan.stages]
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
        self.pinned = None
        self.cores = usable_cores()       # before pinning narrows what this process may use
        if backend == "gloo" and args.pin_cores:
            self.pinned = pin_to_own_cores(int(os.environ.get("LOCAL_RANK", 0)),
                                           int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
        on_gpu = self.device.type == "cuda"
        # The plan's dtype on GPUs; fp32 on a CPU unless asked (CPUs have no fast bf16 kernels).
        self.dtype = args.dtype or (self.plan.dtype if on_gpu else "fp32")
        self.compile = on_gpu if args.compile is None else args.compile
        # Text given as files is tokenized as bytes into the cache once, by each machine's first rank;
        # then every rank opens the same corpus (and reads only its own rows of it).
        specs = parse_specs(args.data or (self.plan.data.specs() if self.plan.data else None))
        if int(os.environ.get("LOCAL_RANK", 0)) == 0:
            self.corpus = open_corpus(specs)
        dist.barrier()
        if int(os.environ.get("LOCAL_RANK", 0)) != 0:
            self.corpus = open_corpus(specs)
        check_corpus(self.corpus, self.plan)
        self.data_desc = self.corpus.text
        self.teacher = teacher_samplers(self.plan, args.seed, self.corpus)
        compute = Precision.of(self.dtype).compute or torch.float32
        self.peak, self.peak_source, self.gpu_key = peak_flops(self.device, compute)
        # Preemption: a signal only sets a flag; the ranks agree on it after each step over a CPU
        # (gloo) group, so no rank stops alone and the GPU stream is never synchronised for it.
        self.signalled = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.flag_group = dist.new_group(backend="gloo") if backend == "nccl" else None
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            # The plan this run executes sits beside its metrics, for `flmplan validate RUN_DIR`.
            run_plan = self.out / "plan.json"
            if not run_plan.exists() or run_plan.resolve() != Path(args.plan).resolve():
                run_plan.write_text(Path(args.plan).read_text())
            record_run_data(self.corpus, self.out)
        dist.barrier()
        self.metrics = open(self.out / "metrics.jsonl", "a") if self.rank == 0 else None  # noqa: SIM115

    def _on_signal(self, signum, frame) -> None:
        self.signalled = True

    def preempted(self) -> bool:
        """Whether any rank has been asked to stop (one all-reduce of a CPU scalar)."""
        flag = torch.tensor([1 if self.signalled else 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.flag_group)
        return bool(flag.item())

    def log(self, record: dict) -> None:
        if self.metrics:
            self.metrics.write(json.dumps(record) + "\n")
            self.metrics.flush()

    def say(self, text: str) -> None:
        if self.rank == 0:
            print(text, flush=True)

    # --- building a stage ------------------------------------------------------
    def build(self, k: int, full: Decoder) -> tuple[ParallelModel, list[torch.optim.Optimizer]]:
        stage = self.plan.stages[k]
        layout = stage.layout
        mesh = make_mesh(layout, self.device.type)
        pm = parallelize(full, layout, mesh, self.device, seed=self.args.seed + k,
                         precision=Precision.of(self.dtype), compile=self.compile)
        return pm, [make_optimizer(c, stage.lr) for c in pm.chunks]

    def fresh(self, k: int, meta: bool = False) -> Decoder:
        """Stage k's model, initialised; on the meta device (no memory) when it is to be sharded
        as it is allocated (large models, and every grown stage)."""
        torch.manual_seed(self.args.seed + k)
        if meta:
            with torch.device("meta"):
                return Decoder(self.configs[k])
        return Decoder(self.configs[k])

    def on_meta(self, k: int) -> bool:
        """Build on the meta device when the whole model would not be small (params > --meta-above)."""
        return self.plan.stages[k].model.params() > self.args.meta_above

    def grown(self, k: int, previous: Path) -> tuple[ParallelModel, list, GrowthState]:
        """Stage k on its own layout, grown from stage k−1's final checkpoint shard by shard: the
        new model is built on the meta device, each rank allocates its shards and reads into them
        only the old values that land there."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
        else:
            before = current_rss()
        pm, opts = self.build(k, self.fresh(k, meta=True))
        growth = self.plan.stages[k].growth
        state = grow_sharded(pm.chunks, opts, previous, self.configs[k - 1], growth.grow_steps)
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) - before
        else:
            peak = peak_rss() - before
        share = pm.state_bytes(opts)
        rows: list = [None] * dist.get_world_size()
        dist.all_gather_object(rows, {"peak_bytes": peak, "share_bytes": share["params"] + share["optimizer"]})
        self.log({"event": "growth_memory", "growth_into_stage": k + 1, "ranks": rows,
                  "how": "CUDA max_memory_allocated" if self.device.type == "cuda" else "VmHWM − VmRSS before"})
        return pm, opts, state

    # --- the run -----------------------------------------------------------------
    @cached_property
    def fingerprint(self) -> str:
        from planner.plan import plan_fingerprint

        return plan_fingerprint(self.plan)

    @cached_property
    def data_fingerprint(self) -> str:
        """What a resumed run must share of the data: each source's size, weight and tokenizer."""
        import hashlib

        keep = [(s.data.n_tokens, s.data.documents, round(s.weight, 9), s.record["tokenizer"]["sha256"])
                for s in self.corpus.sources]
        return hashlib.sha256(json.dumps(keep).encode()).hexdigest()[:16]

    def run(self) -> None:
        resume = checkpoint.latest_good(self.ckpt_dir, log=self.say, from_scratch=self.args.from_scratch)
        start_stage, start_step, position, counts = 0, 0, 0, None
        if resume and resume[1].get("plan_fingerprint", self.fingerprint) != self.fingerprint:
            raise FlmplanError(f"Checkpoint {resume[0]} was written by a different plan (other shapes, layouts, "
                               f"steps or growths); resume with that plan, or use a new --out.")
        if resume and resume[1].get("data_fingerprint", self.data_fingerprint) != self.data_fingerprint:
            raise FlmplanError(f"Checkpoint {resume[0]} was written by a run on other data (other corpora, weights or "
                               "tokenizer); resume with the same --data, or use a new --out.")
        self.log({"event": "start", "resume_from": resume[0].name if resume else None,
                  "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "processes": dist.get_world_size(),
                  "data": self.data_desc, **self.device_facts()})
        if resume:
            path, manifest = resume
            start_stage, start_step = checkpoint.stage_index(manifest), manifest["step"]
            position, counts = manifest["data_position"], manifest.get("data_counts")
            if manifest.get("stage_done"):
                start_stage, start_step = start_stage + 1, 0
            self.say(f"resuming from {path.name}: stage {start_stage + 1}, step {start_step}")
        self.say(f"dtype {self.dtype}, compile {'on' if self.compile else 'off'}; MFU against {self.peak_source} "
                 f"({self.peak / 1e12:.3g} TFLOP/s)")
        seq = self.plan.stages[0].model.seq
        sampler = Sampler(self.corpus, seq=seq, seed=self.args.seed, position=position, counts=counts)
        self.reader = ReadAhead(sampler)
        sequences = self.plan.language_sequences()
        epochs = self.corpus.epochs(seq, sequences)
        self.log({"event": "data", **self.corpus.record(), "epochs": epochs, "sequences": sequences, "seq": seq})
        for s, e in zip(self.corpus.sources, epochs, strict=True):
            if e > 1:
                self.say(f"data: {s.name} holds {s.data.n_tokens:,} tokens; the plan reads it {e:.2f} times "
                         "(each epoch in a new order)")
        if resume and resume[1].get("stage_done") and start_stage < len(self.plan.stages):
            self.probe_before_growth(start_stage, resume[0], sampler)
        for k in range(start_stage, len(self.plan.stages)):
            self.run_stage(k, start_step if k == start_stage else 0, sampler, resume)
            resume = None
        dist.barrier()
        if self.rank == 0:
            (self.out / "DONE.json").write_text(json.dumps({"stages": len(self.plan.stages), "data": self.data_desc,
                                                            "plan_fingerprint": self.fingerprint}))
            self.say(f"done: {len(self.plan.stages)} stages; metrics in {self.out / 'metrics.jsonl'}")

    def run_stage(self, k: int, start_step: int, sampler: Sampler, resume) -> None:
        stage = self.plan.stages[k]
        layout = stage.layout
        growth: GrowthState | None = None
        grew = False
        if resume and start_step > 0:
            pm, opts = self.build(k, self.fresh(k, meta=self.on_meta(k)))
            checkpoint.load(resume[0], pm.chunks, opts)
            # fp16's dynamic loss scale goes on where it was (the resumed steps equal the uninterrupted ones).
            pm.precision.scale = resume[1].get("loss_scale", pm.precision.scale)
            pm.precision.good_steps = resume[1].get("loss_scale_good_steps", 0)
            if resume[1].get("growth"):
                growth = GrowthState(**resume[1]["growth"])
        elif k == 0:
            pm, opts = self.build(k, self.fresh(k, meta=self.on_meta(k)))
        else:
            previous = checkpoint.latest_good(self.ckpt_dir, log=self.say, from_scratch=self.args.from_scratch)
            pm, opts, growth = self.grown(k, previous[0])
            grew = True
        steps = stage.steps
        warmup = stage_warmup_steps(stage)
        teacher_every = stage.objective.teacher_every if stage.objective.kind == "freelm" else 0
        for chunk in pm.chunks:        # masks sliced to this rank's heads and neurons
            apply_masks(chunk, growth, growth.value(start_step) if growth else 1.0)
        if grew:
            self.eval_growth(k, pm, sampler, "after_growth")
        meter = Meter(self, k, stage, layout, steps, start_step)
        self.say(f"stage {k + 1}/{len(self.plan.stages)} {stage.name}: {steps} steps, layout "
                 f"{layout.describe()}{meter.predicted_text()}")
        every = checkpoint_interval(self.args.checkpoint_every, k) or max(5, steps // 4)
        for step in range(start_step, steps):
            c = growth.value(step) if growth else 1.0
            for chunk in pm.chunks:
                apply_masks(chunk, growth, c)
            lr = lr_at(step, steps, stage.lr, warmup)
            for o in opts:
                set_lr(o, lr)
            signal = "teacher" if is_teacher_step(step, teacher_every) else "language"
            if signal == "teacher":
                x, y = self.teacher[k][0].batch(teacher_steps_before(step, teacher_every), layout.global_batch,
                                               pm.dp_rank, layout.dp)
            else:
                began = time.perf_counter()
                x, y = self.reader.next(layout.global_batch, pm.dp_rank, layout.dp)
                meter.data_s = time.perf_counter() - began
            loss = pm.train_batch(x, y, signal)
            norm, overflow = pm.clip_and_unscale(MAX_GRAD_NORM)
            skipped = pm.precision.loss_scaling and bool(overflow)   # fp16 only: one host sync
            if not skipped:
                for o in opts:
                    o.step()
            if step == start_step:
                self.log_state_bytes(k, pm, opts)
            for o in opts:
                o.zero_grad(set_to_none=True)
            pm.precision.update(skipped)
            meter.step(step, loss, norm, lr, c, sampler, skipped, pm.precision.scale, signal,
                       pm.teacher_accuracy)
            done = step == steps - 1
            stop = self.preempted()
            if done or stop or (step + 1) % every == 0 or (step + 1) % self.args.log_every == 0:
                meter.flush()
            # Evaluations and checkpoints are not training steps: their time stays out of the step
            # timings (as Megatron-LM stops its interval timer), and a checkpoint logs its own.
            with meter.paused():
                if teacher_every and (done or (step + 1) % every == 0):
                    self.eval_teacher(k, pm, step + 1)
                if (done or stop or (step + 1) % every == 0) and not self.args.no_checkpoints:
                    self.save(k, step + 1, sampler, pm, opts, growth if c < 1 else None, done)
            if stop:
                self.log({"event": "preempted", "stage": k + 1, "step": step + 1,
                          "saved": not self.args.no_checkpoints})
                self.say(f"preempted: saved stage {k + 1} at step {step + 1}; the same command resumes there")
                raise Preempted()
            # Tests: die here (SIGKILL, as a crashed node would), once per point of a comma-separated list.
            here = f"{k}:{step + 1}"
            marker = self.out / f"KILLED-{here.replace(':', '-')}"
            if here in os.environ.get("FLMPLAN_KILL_AT", "").split(",") and self.rank == 0 and not marker.exists():
                marker.write_text("")
                os.kill(os.getpid(), 9)
        meter.close()
        if k + 1 < len(self.plan.stages):
            self.eval_growth(k + 1, pm, sampler, "before_growth")

    def log_state_bytes(self, k: int, pm: ParallelModel, opts: list) -> None:
        """What each rank holds of parameters, gradients and optimizer state, once per stage (after
        its first step, when all three exist): the figures planner/memory.py predicts."""
        rows: list = [None] * dist.get_world_size()
        dist.all_gather_object(rows, pm.state_bytes(opts))
        self.log({"event": "state_bytes", "stage": k + 1, "ranks": rows})

    def probe_before_growth(self, k: int, finished: Path, sampler: Sampler) -> None:
        """A run stopped between stages lost the fixed-batch loss before growth k: measure it again
        from stage k−1's final checkpoint, so every growth keeps its before/after pair."""
        pm, opts = self.build(k - 1, self.fresh(k - 1, meta=True))
        checkpoint.load(finished, pm.chunks, opts)
        self.eval_growth(k, pm, sampler, "before_growth")

    def eval_growth(self, k: int, pm: ParallelModel, sampler: Sampler, when: str) -> None:
        """The loss of a fixed batch just before and just after a growth (nothing is updated)."""
        layout = pm.layout
        probe = Sampler(self.corpus, seq=sampler.seq, seed=self.args.seed + 777)
        x, y = probe.batch(layout.global_batch, pm.dp_rank, layout.dp)
        loss = pm.train_batch(x, y)
        for c in pm.chunks:
            c.zero_grad(set_to_none=True)
        self.log({"event": when, "growth_into_stage": k + 1, "loss": float(loss)})

    def eval_teacher(self, k: int, pm: ParallelModel, step: int) -> None:
        """FreeLM's teacher signal on its held-out propositions, per task (nothing is updated): loss and
        accuracy, each task's batches filled by repeating its propositions."""
        gb, per_rank = pm.layout.global_batch, pm.layout.global_batch // pm.layout.dp
        cfg = self.configs[k]
        tasks: dict[str, list] = {}
        for p in self.teacher[k][1]:
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
        self.log({"event": "teacher_eval", "stage": k + 1, "step": step,
                  "loss": sum(r[0] * r[2] for r in results.values()) / n,
                  "accuracy": sum(r[1] * r[2] for r in results.values()) / n, "propositions": n,
                  **({"tasks": {t: {"accuracy": r[1], "loss": r[0], "propositions": r[2]} for t, r in results.items()}}
                     if len(results) > 1 or "" not in results else {})})

    def save(self, k, step, sampler, pm, opts, growth, done) -> None:
        manifest = {"stage": k + 1, "stage_numbering": 1, "step": step, "stage_done": done,
                    **sampler.state(), "data_fingerprint": self.data_fingerprint,
                    "global_step": sum(s.steps for s in self.plan.stages[:k]) + step,
                    "tokens": sampler.position * sampler.seq, "layout": self.plan.stages[k].layout.to_dict(),
                    "model": self.plan.stages[k].model.to_dict(), "growth": growth.to_dict() if growth else None,
                    "rng_state": torch.get_rng_state().tolist()[:64], "seed": self.args.seed,
                    "dtype": self.dtype, "loss_scale": pm.precision.scale,
                    "loss_scale_good_steps": pm.precision.good_steps, "plan_fingerprint": self.fingerprint}
        start = time.perf_counter()
        checkpoint.save(self.ckpt_dir, f"stage{k + 1}-step{step:07d}", pm.chunks, opts, manifest)
        self.log({"event": "checkpoint", "stage": k + 1, "step": step,
                  "seconds": round(time.perf_counter() - start, 4)})
        if len(self.corpus.sources) > 1:
            self.log({"event": "data_mixture", "stage": k + 1, "step": step, "sequences": sum(sampler.counts),
                      "shares": sampler.shares(), "weights": {s.name: s.weight for s in self.corpus.sources}})

    def device_facts(self) -> dict:
        """What `flmplan validate` needs to predict this run: the device, and on a CPU how many
        threads each rank runs on how many cores of this machine."""
        if self.device.type == "cuda":
            return {"device": torch.cuda.get_device_name(self.device), "device_kind": "cuda", "gpu": self.gpu_key,
                    "dtype": self.dtype}
        return {"device": "cpu", "device_kind": "cpu", "threads": torch.get_num_threads(),
                "cores": self.cores, "pinned_cores": self.pinned, "dtype": self.dtype}

    def memory_gib(self) -> float:
        """Peak memory of this rank: allocated GPU memory, or the process's peak resident set."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    def close(self) -> None:
        if getattr(self, "reader", None) is not None:
            self.reader.close()
        if self.metrics:
            self.metrics.close()
        dist.barrier()
        dist.destroy_process_group()


class Meter:
    """Per-step records of one stage, read from the device once per window; timings are the
    window's wall time over its steps (the first window includes compilation)."""

    def __init__(self, run: Run, k: int, stage: PlanStage, layout: Layout, steps: int, start_step: int) -> None:
        self.run, self.k, self.stage, self.steps = run, k, stage, steps
        spec = stage.model
        self.tokens_per_step = layout.global_batch * spec.seq
        self.model_flops = model_flops_per_token(spec)
        self.hardware_flops = hardware_flops_per_token(spec, layout.recompute, layout.attention)
        self.predicted = predicted_for(run, stage, layout)
        self.pending: list[dict] = []
        self.data_s = 0.0              # the last language step's time to assemble its batch
        self.window_start = time.perf_counter()
        self.progress = None
        if run.rank == 0 and sys.stdout.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn(f"stage {k + 1}"), BarColumn(), TextColumn("{task.completed}/"
                                     "{task.total}"), TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
            self.task = self.progress.add_task("", total=steps, completed=start_step, rate="")
            self.progress.start()

    def predicted_text(self) -> str:
        p = self.predicted
        if not p:
            return ""
        return (f"; planner predicts {p['predicted_tokens_per_s']:,.0f} tokens/s, MFU {p['predicted_mfu']:.1%} "
                f"({p['predicted_source']})")

    def step(self, step: int, loss, norm, lr: float, mask: float, sampler: Sampler, skipped: bool,
             scale: float, signal: str = "language", accuracy=None) -> None:
        data = {"data_s": self.data_s, "data_digest": sampler.digest} if signal == "language" else {}
        self.pending.append({"step": step, "loss": loss, "grad_norm": norm, "lr": lr, "mask": mask,
                             "data_position": sampler.position, "skipped": skipped, "scale": scale, "signal": signal,
                             "accuracy": accuracy if accuracy is not None else torch.zeros_like(loss), **data})

    def flush(self) -> None:
        if not self.pending:
            return
        run = self.run
        values = torch.stack([torch.stack([r["loss"].float(), r["grad_norm"].float(), r["accuracy"].float()])
                              for r in self.pending]).cpu()
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
        elapsed = time.perf_counter() - self.window_start
        step_s = elapsed / len(self.pending)
        tps = self.tokens_per_step / step_s
        world = dist.get_world_size()
        memory = torch.tensor(run.memory_gib(), dtype=torch.float64, device=run.device)
        dist.all_reduce(memory, op=dist.ReduceOp.MAX)
        model_fu = mfu(tps, self.model_flops, run.peak, world)
        for r, (loss, norm, acc) in zip(self.pending, values.tolist(), strict=True):
            # A FreeLM teacher step has no language loss: its loss and accuracy are the teacher signal's.
            signal = {"loss": loss} if r["signal"] == "language" else {
                "signal": "teacher", "teacher_loss": loss, "teacher_accuracy": acc}
            run.log({"stage": self.k + 1, "stage_name": self.stage.name, "step": r["step"], **signal,
                     "lr": r["lr"], "grad_norm": norm, "mask": r["mask"], "skipped": r["skipped"],
                     "tokens_per_s": tps, "step_s": step_s,
                     "mfu": model_fu,
                     "hfu": mfu(tps, self.hardware_flops, run.peak, world),
                     "memory_gib_per_gpu": float(memory), "data_position": r["data_position"],
                     **{key: r[key] for key in ("data_s", "data_digest") if key in r},
                     "dtype": run.dtype, "compile": run.compile, "loss_scale": r["scale"],
                     **self.predicted})
        last = self.pending[-1]["step"] + 1
        language = [v[0] for r, v in zip(self.pending, values.tolist(), strict=True) if r["signal"] == "language"]
        text = f"{tps:,.0f} tokens/s, MFU {model_fu:.1%}" + (f", loss {language[-1]:.4f}" if language else "")
        if self.progress is not None:
            self.progress.update(self.task, completed=last, rate=text)
        elif run.rank == 0:
            print(f"  stage {self.k + 1} step {last}/{self.steps}: {text}, {float(memory):.1f} GiB", flush=True)
        self.pending = []
        self.window_start = time.perf_counter()

    @contextlib.contextmanager
    def paused(self):
        """Leave the time inside out of the current window."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.window_start += time.perf_counter() - start

    def close(self) -> None:
        self.flush()
        if self.progress is not None:
            self.progress.stop()


def teacher_samplers(plan, seed: int, corpus: Corpus) -> dict[int, tuple[freelm.TeacherSampler, list]]:
    """Stage index → (sampler of its training propositions, its held-out ones), for FreeLM stages."""
    out, files = {}, {}
    for k, st in enumerate(plan.stages):
        if st.objective.kind != "freelm":
            continue
        path = st.objective.teacher_data
        if not path:
            raise FlmplanError(f"Stage {k + 1} ({st.name}) trains FreeLM's teacher signal but names no teacher_data; "
                               "give a JSON-lines file of propositions (flmplan run --teacher-data FILE).")
        if corpus.tokenizer["kind"] != "bytes":
            raise FlmplanError("The teacher signal encodes propositions as bytes; train FreeLM stages on byte-level "
                               "data (text files, or a corpus prepared without a tokenizer).")
        if path not in files:
            files[path] = freelm.split(freelm.iq_propositions() if path == freelm.IQ_SOURCE
                                       else freelm.read_teacher_file(path), seed)
        train, held = files[path]
        out[k] = (freelm.TeacherSampler(train, st.model.seq, st.model.vocab, seed=seed + 1000 * (k + 1)), held)
    return out


def predicted_for(run: Run, stage: PlanStage, layout: Layout) -> dict:
    """The planner's prediction for this stage on this hardware: the plan's own when the run is on
    the plan's GPU type and size, else the cost model for the GPU at hand (built-in profile);
    nothing on a CPU, which the planner does not model."""
    world = dist.get_world_size()
    if run.gpu_key is None:
        return {}
    plan_gpu = run.plan.cluster.gpu
    spec = stage.model
    tokens = layout.global_batch * spec.seq
    if plan_gpu == run.gpu_key and layout.gpus == world:
        p = stage.predicted
        return {"predicted_step_s": p.step_s, "predicted_tokens_per_s": tokens / p.step_s,
                "predicted_mfu": p.mfu, "predicted_memory_gib_per_gpu": p.memory_gib_per_gpu,
                "predicted_source": "the plan"}
    from planner.cost import estimate_step
    from planner.profile import builtin_profile
    from planner.specs import ClusterSpec, get_gpu

    gpu = get_gpu(run.gpu_key)
    est = estimate_step(spec, ClusterSpec.on(gpu, world), layout, builtin_profile(run.gpu_key))
    return {"predicted_step_s": est.iteration_s, "predicted_tokens_per_s": est.tokens_per_s,
            "predicted_mfu": est.mfu, "predicted_memory_gib_per_gpu": est.memory.total_gib,
            "predicted_source": f"cost model, built-in {run.gpu_key} profile"}


def checkpoint_interval(text: str | int, k: int) -> int:
    """Stage k's steps between checkpoints from --checkpoint-every: one value for all, or one per stage."""
    values = [int(v) for v in str(text).split(",") if v.strip()] or [0]
    return values[k] if k < len(values) else values[-1]


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
