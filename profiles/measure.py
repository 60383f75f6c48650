"""The sweep behind `flmplan profile`: measure, fit, and build a Profile.

Only torch, numpy-free standard library and rich are used here, so the sweep runs on bare
GPU images (no simpy, plotly or pydantic).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import platform
import socket
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from planner.cost.device_profile import Profile, ProfileError
from planner.jsonio import cache_root, write_json
from planner.model.specs import gpu_for_device
from profiles import fit
from profiles.collectives import measure_collectives
from profiles.kernels import layer_gemm_shapes, measure_attention, measure_gemm, memory_bound_ops
from profiles.layer import issue_probe, measure_layer
from profiles.timing import DTYPES, SETTLED, TARGET_SPREAD, measure


@dataclass
class Sweep:
    """What to measure. `quick` on a CPU stays under two minutes on two cores. Attention at two
    head dimensions and two sequence lengths or more: only they tell a flash kernel's work per
    score and per query row from its matmuls (profiles/fit.py fit_attention)."""

    hiddens: list[int]
    tokens: list[int]
    tps: list[int]
    attention: list[tuple[int, int, int, int]]        # batch, seq, heads, head_dim
    memory_bound: list[tuple[int, int]]               # tokens, hidden
    layers: list[tuple[int, int, int, int]]           # hidden, heads, seq, micro_batch
    collective_bytes: list[int] = field(default_factory=list)
    reps: int = 3                 # at least this many timed calls per point
    budget_s: float = 1.0         # at most about this long timing one kernel point
    layer_budget_s: float = 2.0   # and one of a whole layer's three measurements


# About how long the collectives and the tensor-parallel probe take, for the bar's ETA.
COLLECTIVES_S = 30.0


class SweepStopped(Exception):
    """Ctrl-C during the sweep: the points measured are kept, and the same command continues from them."""


class SavedPoints:
    """The sweep's points as they are measured, kept in the cache under the sweep's fingerprint (device,
    dtype, threads, torch, the sweep itself), rewritten atomically at most every SAVE_S and when stopped:
    the same sweep started again measures only what is missing. Dropped once the sweep is whole."""

    SAVE_S = 2.0

    def __init__(self, fingerprint: dict) -> None:
        key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.fingerprint = json.loads(json.dumps(fingerprint, default=str))
        self.path = cache_root() / "profile" / f"{key}.json"
        try:
            raw = json.loads(self.path.read_text()) if self.path.is_file() else {}
        except (OSError, json.JSONDecodeError):
            raw = {}
        self.points: dict[str, dict] = raw.get("points", {}) if raw.get("fingerprint") == self.fingerprint else {}
        self.resumed = sum(len(v) for v in self.points.values())
        self.saved = time.monotonic()

    def get(self, kind: str, *key):
        return self.points.get(kind, {}).get(",".join(map(str, key)))

    def put(self, kind: str, value, *key):
        self.points.setdefault(kind, {})[",".join(map(str, key))] = value
        if time.monotonic() - self.saved > self.SAVE_S:
            self.save()
        return value

    def save(self) -> None:
        write_json({"fingerprint": self.fingerprint, "points": self.points}, self.path)
        self.saved = time.monotonic()

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def default_sweep(device: torch.device, quick: bool) -> Sweep:
    if device.type == "cpu" and quick:
        return Sweep(
            hiddens=[256, 512, 768, 1024], tokens=[256, 512], tps=[1, 2],
            attention=[(b, s, h, d) for b in (1, 2) for s in (64, 128, 256) for h in (4, 16) for d in (16, 32, 64)],
            memory_bound=[(256, 512), (512, 768), (1024, 1024)],
            layers=[(256, 4, 256, 2), (512, 8, 256, 2), (768, 12, 256, 2), (1024, 16, 256, 2)],
            collective_bytes=[1 << 12, 1 << 20, 8 << 20], reps=5, budget_s=0.15, layer_budget_s=1.5,
        )
    if device.type == "cpu":
        return Sweep(
            hiddens=[256, 512, 1024, 2048], tokens=[256, 1024, 2048], tps=[1, 2, 4],
            attention=[(b, s, h, d) for b in (1, 4) for s in (256, 512, 1024) for h in (8, 16) for d in (32, 64, 128)],
            memory_bound=[(512, 512), (1024, 1024), (2048, 2048), (4096, 2048)],
            layers=[(256, 4, 256, 4), (512, 8, 512, 2), (1024, 16, 512, 2), (2048, 16, 1024, 1)],
            collective_bytes=[1 << 12, 1 << 18, 1 << 20, 8 << 20, 64 << 20], reps=5, budget_s=0.5,
        )
    if quick:
        return Sweep(
            hiddens=[2048, 4096, 8192], tokens=[4096, 8192], tps=[1, 2, 4, 8],
            attention=[(b, s, h, d) for b in (1, 4) for s in (2048, 4096) for h in (16, 32) for d in (64, 128)],
            memory_bound=[(8192, 4096), (16384, 8192), (32768, 8192)],
            layers=[(2048, 16, 2048, 2), (4096, 32, 2048, 2), (8192, 64, 2048, 1)],
            collective_bytes=[1 << 20, 64 << 20, 512 << 20], reps=10, budget_s=0.2,
        )
    return Sweep(
        hiddens=[1024, 2048, 4096, 6144, 8192, 12288], tokens=[2048, 4096, 8192, 16384], tps=[1, 2, 4, 8],
        attention=[(b, s, h, d) for b in (1, 4) for s in (1024, 2048, 4096, 8192) for h in (16, 32, 64)
                   for d in (64, 128)],
        memory_bound=[(4096, 4096), (8192, 8192), (16384, 8192), (32768, 12288)],
        layers=[(2048, 16, 2048, 2), (4096, 32, 2048, 2), (6144, 48, 2048, 1), (8192, 64, 2048, 1)],
        collective_bytes=[1 << 16, 1 << 20, 16 << 20, 128 << 20, 1 << 30], reps=20, budget_s=0.3,
    )


def _measure_kernels(progress: Progress, task, gemm_shapes: list, sweep: Sweep, device: torch.device,
                     tdtype: torch.dtype, saved: SavedPoints) -> tuple[list, list, list, list]:
    """The sweep's points, kind by kind: GEMMs, flash attention, memory-bound ops and whole layers; a
    point the saved points hold already is taken from them."""
    gemm_points, attn_points, mem_points, layer_points = [], [], [], []
    for m, n, k, kind in gemm_shapes:
        point = saved.get("gemm", m, n, k, kind)
        if point is None:
            t = measure_gemm(m, n, k, kind, device, tdtype, sweep.reps, sweep.budget_s)
            point = saved.put("gemm", {"m": m, "n": n, "k": k, "pass": kind, "time_s": t.median_s,
                                       "tflops": 2 * m * n * k / t.median_s / 1e12, "spread": round(t.spread, 4)},
                              m, n, k, kind)
        gemm_points.append(point)
        progress.advance(task, sweep.budget_s)
    progress.update(task, description="attention")
    for b, s, h, d in sweep.attention:
        point = saved.get("attention", b, s, h, d)
        if point is None:
            f, bw = measure_attention(b, s, h, d, device, tdtype, sweep.reps, sweep.budget_s)
            point = saved.put("attention", {"batch": b, "seq": s, "heads": h, "head_dim": d, "causal": True,
                                            "fwd_s": f.median_s, "bwd_s": bw.median_s,
                                            "spread": round(max(f.spread, bw.spread), 4)}, b, s, h, d)
        attn_points.append(point)
        progress.advance(task, sweep.budget_s)
    progress.update(task, description="memory-bound ops")
    for tokens, hidden in sweep.memory_bound:
        points = saved.get("memory_bound", tokens, hidden)
        if points is None:
            points = []
            for op, nbytes, fn in memory_bound_ops(tokens, hidden, device, tdtype):
                t = measure(fn, device, min_reps=sweep.reps, budget_s=sweep.budget_s)
                points.append({"op": op, "bytes": nbytes, "time_s": t.median_s, "gbps": nbytes / t.median_s / 1e9,
                               "spread": round(t.spread, 4)})
            saved.put("memory_bound", points, tokens, hidden)
        mem_points += points
        progress.advance(task, sweep.budget_s)
    progress.update(task, description="whole layers")
    for hidden, heads, seq, mb in sweep.layers:
        point = saved.get("layer", hidden, heads, seq, mb)
        if point is None:
            point = saved.put("layer", measure_layer(hidden, heads, seq, mb, device, tdtype, sweep.reps,
                                                     sweep.layer_budget_s), hidden, heads, seq, mb)
        layer_points.append(point)
        progress.advance(task, 3 * sweep.layer_budget_s)
    return gemm_points, attn_points, mem_points, layer_points


def _sweep(console: Console, total: float, gemm_shapes: list, sweep: Sweep, device: torch.device,
           tdtype: torch.dtype, saved: SavedPoints, ranks: int, multi: bool) -> tuple:
    """The measurements under one progress bar: the kernels (kept as they come), the first layer again, the
    issue probe on a GPU, and the collectives when there are several ranks."""
    layer_s = 3 * sweep.layer_budget_s
    coll_points, tensor_parallel = [], None
    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                  TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False) as progress:
        task = progress.add_task("GEMMs", total=total)
        kernels = _measure_kernels(progress, task, gemm_shapes, sweep, device, tdtype, saved)
        saved.save()
        # The first layer again, at the end of the sweep: the profile's own check of its stability.
        progress.update(task, description="first layer again")
        again = measure_layer(*sweep.layers[0], device, tdtype, sweep.reps, sweep.layer_budget_s)
        issue = issue_probe(device, tdtype, sweep.reps, sweep.layer_budget_s) if device.type == "cuda" else None
        progress.advance(task, layer_s)
        if multi:
            progress.update(task, description="collectives")
            coll_points, tensor_parallel = measure_collectives(ranks, "nccl" if device.type == "cuda" else "gloo",
                                                               sweep.collective_bytes, dtype=tdtype)
            progress.advance(task, COLLECTIVES_S)
    return kernels, again, issue, coll_points, tensor_parallel


def run_profile(device_kind: str = "cpu", dtype: str | None = None, quick: bool = False, nproc: int = 2,
                name: str | None = None, console: Console | None = None, sweep: Sweep | None = None,
                threads: int | None = None) -> Profile:
    if device_kind == "cuda" and not torch.cuda.is_available():
        raise ProfileError("--device cuda was asked for but torch sees no CUDA device; use --device cpu.")
    device = torch.device("cuda", 0) if device_kind == "cuda" else torch.device("cpu")
    if threads is not None:
        torch.set_num_threads(threads)
    dtype = dtype or ("bf16" if device.type == "cuda" else "fp32")
    if dtype not in DTYPES:
        raise ProfileError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
    tdtype = DTYPES[dtype]
    elem = torch.finfo(tdtype).bits // 8
    sweep = sweep or default_sweep(device, quick)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        platform.processor() or platform.machine())
    if device.type == "cpu":
        device_name = f"CPU {device_name} ({torch.get_num_threads()} threads)"
    count = torch.cuda.device_count() if device.type == "cuda" else 1

    gemm_shapes = sorted({s for h in sweep.hiddens for t in sweep.tokens for tp in sweep.tps
                          if (h // tp) % 64 == 0 or tp == 1 for s in layer_gemm_shapes(h, t, tp)})
    multi = (device.type == "cpu" and nproc > 1) or (device.type == "cuda" and count > 1)
    # The bar counts each point by its time budget (a GEMM point is a fraction of a second, a layer
    # three measurements of seconds), so its ETA is in time, not in points.
    kernels = len(gemm_shapes) + len(sweep.attention) + len(sweep.memory_bound)
    layer_s = 3 * sweep.layer_budget_s
    total = kernels * sweep.budget_s + (len(sweep.layers) + 1) * layer_s + (COLLECTIVES_S if multi else 0.0)
    console = console or Console(stderr=True)
    saved = SavedPoints({"device": device_name, "dtype": dtype, "threads": torch.get_num_threads(),
                         "torch": torch.__version__, "multi": multi, "sweep": asdict(sweep)})
    if saved.resumed:
        console.print(f"resuming: {saved.resumed} points of this sweep were measured before ({saved.path})")
    try:
        (gemm_points, attn_points, mem_points, layer_points), again, issue, coll_points, tensor_parallel = _sweep(
            console, total, gemm_shapes, sweep, device, tdtype, saved, nproc if device.type == "cpu" else count, multi)
    except KeyboardInterrupt:
        saved.save()
        raise SweepStopped(f"Stopped; the {sum(map(len, saved.points.values()))} points of the sweep measured so far "
                           f"are kept ({saved.path}), and the same command continues from them.") from None
    saved.discard()
    gpu = gpu_for_device(device_name) if device.type == "cuda" else None
    measured_peak = max(p["tflops"] for p in gemm_points)
    peak = gpu.peak_tflops_bf16 if gpu and dtype in ("bf16", "fp16") else measured_peak
    mem_fit = fit.fit_memory_bound(mem_points)
    hbm = gpu.hbm_tbps * 1000 if gpu else mem_fit["bandwidth_gbps"]
    gemm_fit = fit.fit_gemm(gemm_points, peak * 1e12, hbm * 1e9, elem)
    attn_fit = fit.fit_attention(attn_points, peak * 1e12, gemm_fit["overhead_us"] * 1e-6)
    collectives = _collectives(coll_points, gpu, device.type == "cpu")
    if coll_points:
        collectives["tensor_parallel"] = tensor_parallel
    return Profile(
        name=name or _default_name(device_name, dtype),
        source="measured",
        dtype=dtype,
        date=dt.date.today().isoformat(),
        host=socket.gethostname(),
        device={"name": device_name, "kind": device.type, "count": count, "peak_tflops": round(peak, 4),
                "hbm_gbps": round(hbm, 2), "measured_gemm_max_tflops": round(measured_peak, 4),
                "peak_source": "GPU catalog data sheet" if gpu else "fastest measured GEMM",
                **({"issue_us_per_kernel": issue["us_per_kernel"], "issue_probe": issue} if issue else {})},
        software={"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
                  "threads": torch.get_num_threads(), "quick": quick},
        gemm={**gemm_fit, "points": gemm_points},
        attention={**attn_fit, "points": attn_points},
        memory_bound={**mem_fit, "points": mem_points},
        collectives=collectives,
        layers=layer_points,
        timing=_timing_summary(gemm_points, attn_points, mem_points, layer_points, again),
        references=[],
        notes="Measured by `flmplan profile`; fitted parameters are the cost model's curve through the points.",
    )


def _timing_summary(gemm: list[dict], attn: list[dict], mem: list[dict], layers: list[dict], again: dict) -> dict:
    """How still the measurements held: the method, the worst and median spread of the points, and
    the first layer measured at the start and at the end of the sweep."""
    spreads = [p["spread"] for p in (*gemm, *attn, *mem, *layers)]
    first = layers[0]
    t0 = first["forward_s"] + first["backward_s"]
    t1 = again["forward_s"] + again["backward_s"]
    return {
        "method": f"warm-up until the median of 3 calls is within {SETTLED:.0%} of the 3 before; repeats "
                  f"until the interquartile range is within {TARGET_SPREAD:.0%} of the median or the point's "
                  "time budget is spent; medians",
        "median_spread": round(statistics.median(spreads), 4),
        "max_spread": round(max(spreads), 4),
        "repeat": {"layer": f"h{first['hidden']} a{first['heads']} s{first['seq']} b{first['micro_batch']}",
                   "first_s": t0, "again_s": t1, "difference": round(t1 / t0 - 1, 4)},
    }


# NCCL overlapped with compute costs the compute about this much (the derived profiles' fitted
# value); gloo on a CPU runs on the cores that compute, so nothing it does is hidden.
GPU_OVERLAP_SLOWDOWN = 0.3
CPU_OVERLAP_SLOWDOWN = 1.0


def _collectives(points: list[dict], gpu, on_cpu: bool) -> dict:
    if points:
        intra = {**fit.fit_collective(points), "points": points}
        note = ("measured between the processes of this machine, each size the mean of its calls; inter-node "
                "assumed equal (one machine)")
        return {"intra_node": intra, "inter_node": {**fit.fit_collective(points), "points": []},
                "overlap_slowdown": CPU_OVERLAP_SLOWDOWN if on_cpu else GPU_OVERLAP_SLOWDOWN, "note": note}
    if gpu is not None:
        return {"intra_node": {"busbw_gbps": round(0.8 * gpu.nvlink_gbps / 2, 1), "latency_us": 15.0, "points": []},
                "inter_node": {"busbw_gbps": round(0.85 * gpu.network_gbps / 8, 2), "latency_us": 30.0,
                               "points": []},
                "overlap_slowdown": GPU_OVERLAP_SLOWDOWN,
                "note": "one device: collectives from the GPU catalog, not measured"}
    return {"intra_node": {"busbw_gbps": 1.0, "latency_us": 100.0, "points": []},
            "inter_node": {"busbw_gbps": 1.0, "latency_us": 100.0, "points": []},
            "overlap_slowdown": CPU_OVERLAP_SLOWDOWN if on_cpu else GPU_OVERLAP_SLOWDOWN,
            "note": "one process: collectives not measured (use --nproc 2 or more)"}


def _default_name(device_name: str, dtype: str) -> str:
    slug = "".join(c if c.isalnum() else "-" for c in device_name.lower()).strip("-")
    while "--" in slug:
        slug = slug.replace("--", "-")
    return f"{slug[:40]}-{dtype}"
