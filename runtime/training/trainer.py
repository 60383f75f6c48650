"""The `Run`: every stage of a plan in order — train its tokens, checkpoint, grow, re-shard, go on —
under torchrun, resuming from the newest good checkpoint when started again (runtime/train.py is
its entry). Rank 0 writes `metrics.jsonl`; the step never waits for the GPU: losses and norms stay
on the device and are read every `--log-every` steps."""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import time
from functools import cached_property
from pathlib import Path

import torch
import torch.distributed as dist

from planner.errors import FlmplanError
from planner.model.optimizer import MAX_GRAD_NORM
from planner.model.specs import ModelSpec
from planner.plan.plan_file import PlanParametrization, stage_warmup_steps
from runtime import checkpoint
from runtime.data.corpus import check_corpus, open_corpus, parse_specs, record_run_data
from runtime.data.loader import ReadAhead, Sampler
from runtime.growth.msg import GrowthState, apply_masks, grow_sharded
from runtime.hooks import STEP_HOOKS, installed
from runtime.model.decoder import Decoder, DecoderConfig
from runtime.objectives.freelm import is_teacher_step, teacher_samplers, teacher_source, teacher_steps_before
from runtime.parallel.cores import pin_to_own_cores, usable_cores
from runtime.parallel.optim import make_optimizer, set_lr
from runtime.parallel.parallel_model import ParallelModel
from runtime.parallel.parallelize import make_mesh, parallelize
from runtime.parallel.precision import Precision
from runtime.training.lr_schedule import lr_at
from runtime.training.meter import Meter, current_rss, peak_flops, peak_rss
from runtime.training.probes import eval_growth, eval_teacher, log_state_bytes, probe_before_growth

ERROR_FILE = "ERROR.txt"   # a worker's one-sentence error, for the launcher to show
PREEMPTED_EXIT = 143      # 128 + SIGTERM: what a scheduler expects of a job it asked to stop


def config_of(model: ModelSpec, parametrization: PlanParametrization | None = None,
              teacher_head: bool = False) -> DecoderConfig:
    """The runtime's model for a plan stage's validated `model` and parametrization: the same fields,
    every one honoured (GeLU or SwiGLU, tied or untied embeddings, grouped-query attention, SP or µP,
    FreeLM's teacher head)."""
    return DecoderConfig(**model.to_dict(), **(parametrization or PlanParametrization()).config_fields(),
                         teacher_head=teacher_head)


class Preempted(Exception):
    """SIGTERM or SIGINT arrived; the step in flight was finished and saved."""


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        from planner.plan.plan_file import load_plan

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
        self.step_hooks = installed(STEP_HOOKS)

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
        from planner.plan.plan_file import plan_fingerprint

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
            probe_before_growth(self, start_stage, resume[0], sampler)
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
            eval_growth(self, k, pm, sampler, "after_growth")
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
                log_state_bytes(self, k, pm, opts)
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
                    eval_teacher(self, k, pm, step + 1)
                if (done or stop or (step + 1) % every == 0) and not self.args.no_checkpoints:
                    self.save(k, step + 1, sampler, pm, opts, growth if c < 1 else None, done)
            if stop:
                self.log({"event": "preempted", "stage": k + 1, "step": step + 1,
                          "saved": not self.args.no_checkpoints})
                self.say(f"preempted: saved stage {k + 1} at step {step + 1}; the same command resumes there")
                raise Preempted()
            for hook in self.step_hooks:
                hook(self, k, step + 1)
        meter.close()
        if k + 1 < len(self.plan.stages):
            eval_growth(self, k + 1, pm, sampler, "before_growth")

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


def checkpoint_interval(text: str | int, k: int) -> int:
    """Stage k's steps between checkpoints from --checkpoint-every: one value for all, or one per stage."""
    values = [int(v) for v in str(text).split(",") if v.strip()] or [0]
    return values[k] if k < len(values) else values[-1]
