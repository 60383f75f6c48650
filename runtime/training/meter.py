"""What a run measures of its own steps: tokens/s, MFU and HFU against the device's peak (the data
sheet's dense peak on a GPU, the machine's own measured matmul rate on a CPU), peak memory, the
loader's time, and the planner's prediction for the same stage beside them (`metrics.jsonl`)."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist

from planner.model.flops import hardware_flops_per_token, model_flops_per_token
from planner.model.specs import Layout
from planner.plan.plan_file import Plan, PlanStage
from runtime.data.loader import Sampler


class Run(Protocol):
    """What the meter reads of the run it measures (runtime/training/trainer.py `Run`)."""

    plan: Plan
    device: torch.device
    dtype: str
    compile: bool
    peak: float
    rank: int
    gpu_key: str | None

    def log(self, record: dict) -> None: ...

    def memory_gib(self) -> float: ...


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
        from planner.model.specs import gpu_for_device

        name = torch.cuda.get_device_name(device)
        gpu = gpu_for_device(name)
        if gpu is not None:
            return gpu.peak_tflops_bf16 * 1e12, f"{gpu.name} dense bf16 peak (data sheet)", gpu.key
        return measured_peak_flops(device, dtype), f"{name}: measured 1024³ matmul (not in the catalog)", None
    peak, when = cpu_peak_flops(dtype)
    return peak, f"this CPU's 1024³ {str(dtype)[6:]} matmul, measured {when}", None


def cpu_peak_flops(dtype: torch.dtype) -> tuple[float, str]:
    """The CPU's matmul rate, measured once per machine, thread count and dtype and kept in flmplan's cache,
    so that two runs of one plan read their MFU against the same number (a busy moment would move it)."""
    import json
    import os
    import platform

    from runtime.data.corpus import cache_folder

    key = f"{platform.node()}-{platform.machine()}-{os.cpu_count()}-{torch.get_num_threads()}t-{torch.__version__}-" \
          f"{str(dtype)[6:]}"
    file = cache_folder().parent / "peak" / f"{key}.json"
    try:
        record = json.loads(file.read_text())
        return float(record["flops"]), f"{record['date']} (cached: {file})"
    except (OSError, ValueError, KeyError):
        pass
    flops = measured_peak_flops(torch.device("cpu"), dtype)
    date = time.strftime("%Y-%m-%d %H:%M")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"flops": flops, "date": date, "key": key}))
        os.replace(tmp, file)
    except OSError:                  # a read-only home: measured each run, as before
        pass
    return flops, f"{date} (now)"


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
    from planner.cost.device_profile import builtin_profile
    from planner.cost.step import estimate_step
    from planner.model.specs import ClusterSpec, get_gpu

    gpu = get_gpu(run.gpu_key)
    est = estimate_step(spec, ClusterSpec.on(gpu, world), layout, builtin_profile(run.gpu_key))
    return {"predicted_step_s": est.iteration_s, "predicted_tokens_per_s": est.tokens_per_s,
            "predicted_mfu": est.mfu, "predicted_memory_gib_per_gpu": est.memory.total_gib,
            "predicted_source": f"cost model, built-in {run.gpu_key} profile"}
