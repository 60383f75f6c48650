"""Kernel times on one device, read from a profile.

A GEMM takes the longer of its compute time at a shape-dependent efficiency and its memory
time (a roofline), plus a launch overhead; the efficiency rises with the smallest GEMM
dimension, e(d) = e_max · d / (d + k_half), the tile-quantisation effect that Calculon's
efficiency tables capture. Measured points correct the fitted curve near where they were
taken (log-space kernel regression on the ratio measured / model), so a measured profile
is reproduced at its own shapes and the physical model carries it elsewhere.

The profiler times each kernel alone, so a measured time is the launch latency (the host's
dispatch and the device's start) plus the kernel's work. In a training step on a GPU the host
queues kernels ahead of the device and that latency overlaps the kernels before it; so on a
GPU the kernel functions here return the work alone, and a whole pass costs the longer of its
work and the host's time to issue its kernels (`issue_s`; measured on the runtime's own layer
where the profile has it). A CPU runs each kernel on the host that dispatches it, so there the
latency is part of every kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

from planner.cost.device_profile import BYTES_PER_ELEMENT, Profile

# Bandwidth of the correction kernel, in octaves of each GEMM dimension.
_KERNEL_OCTAVES = 0.75


def _log2(x: float) -> float:
    return math.log2(max(x, 1.0))


def core_sharing(profile: Profile, rank_cores: float | None, machine_cores: float | None = None) -> dict[str, float]:
    """How much longer each kind of the profile's times takes on a CPU rank that computes on
    `rank_cores` cores: its kernels by the profile's threads (where it does not say, the machine's
    cores, the profiler's default) over those cores (the rate taken as linear in cores); the
    tensor-parallel host time and gloo's collectives (their copies, reductions and the loopback
    network stack), one thread's work each, by the share of one core the rank gets against the
    share the profiler's probe ranks had. 1 for every kind where `rank_cores` is None (a GPU)."""
    kinds = profile.time_factors()
    if not rank_cores:
        return dict.fromkeys(kinds, 1.0)
    kernels = profile.software.get("threads", machine_cores or rank_cores) / rank_cores
    probe_cores = profile.collectives.get("tensor_parallel", {}).get("probe", {}).get("rank_cores") or 1.0
    one_thread = min(1.0, probe_cores) / min(1.0, rank_cores)
    return {k: one_thread if k in ("collectives", "host") else kernels for k in kinds}


# A causal flash kernel executes half of QKᵀ and of P·V: 2·b·s²·h·d of their 4·b·s²·h·d FLOPs; its
# backward five such products to the forward's two (FlashAttention-2, Dao 2023, arXiv 2307.08691).
FLASH_BWD_FLOPS = 2.5


def flash_work(batch: float, seq: float, heads: float, head_dim: float) -> tuple[float, float, float]:
    """(forward matmul FLOPs, scores, query rows) of a causal flash kernel. Beside its matmuls it
    works on each of the b·h·s²/2 scores it computes (scale, mask, exp, the online softmax's running
    max and sum: the non-matmul work FlashAttention-2 §3.1 names as what holds it back), work that
    does not grow with the head dimension, so a kernel at d = 64 takes more than half its time at
    d = 128 (0.60–1.08 on the H200 profile of profiles/data/measured); and on each of its b·h·s
    query rows (the final rescale, the log-sum-exp, the diagonal tiles a causal mask computes
    whole), so a kernel at 2s takes less than four times its time at s."""
    return 2.0 * batch * seq * seq * heads * head_dim, batch * heads * seq * seq / 2, batch * heads * seq


def gemm_roofline_s(m: float, n: float, k: float, batch: float, peak_flops: float, hbm_bytes_s: float,
                    bytes_per_element: int, e_max: float, k_half: float, overhead_s: float) -> float:
    """max(compute at e(d) = e_max·d/(d + k_half), memory traffic) + launch overhead."""
    flops = 2.0 * m * n * k * batch
    d = min(m, n, k)
    compute = flops / (peak_flops * e_max * d / (d + k_half))
    memory = bytes_per_element * (m * k + k * n + m * n) * batch / hbm_bytes_s
    return max(compute, memory) + overhead_s


@dataclass(frozen=True)
class _Point:
    coords: tuple[float, ...]
    log_ratio: float


def _corrections(points: list[_Point], coords: tuple[float, ...]) -> float:
    """Kernel-weighted mean of log(measured/model) near coords; 0 where nothing was measured."""
    if not points:
        return 0.0
    num = den = 0.0
    for p in points:
        d2 = sum((a - b) ** 2 for a, b in zip(p.coords, coords, strict=True))
        w = math.exp(-d2 / (2 * _KERNEL_OCTAVES**2))
        num += w * p.log_ratio
        den += w
    # Fade to the bare model when the nearest measurement is far away.
    return num / den * min(1.0, den)


class DeviceModel:
    """Kernel-time model of one device (per GPU), built once per profile."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.peak_flops = profile.peak_tflops * 1e12
        self.hbm_bytes_s = profile.hbm_gbps * 1e9
        g = profile.gemm
        self.e_max = float(g["e_max"])
        self.k_half = float(g["k_half"])
        self.gemm_overhead_s = float(g["overhead_us"]) * 1e-6
        a = profile.attention
        self.attn_fwd_eff = float(a["fwd_eff"])
        self.attn_bwd_eff = float(a["bwd_eff"])
        # Seconds per score and per query row of the work that does not grow with the head dimension
        # (0 where the profile could not tell it apart, or a derived profile; flash_work).
        self.attn_fwd_score_s, self.attn_bwd_score_s, self.attn_fwd_row_s, self.attn_bwd_row_s = (
            float(a.get(key, 0.0)) * 1e-12 for key in ("fwd_score_ps", "bwd_score_ps", "fwd_row_ps", "bwd_row_ps"))
        mb = profile.memory_bound
        self.membw_bytes_s = float(mb["bandwidth_gbps"]) * 1e9
        self.mem_overhead_s = float(mb["overhead_us"]) * 1e-6
        self.op_bytes_s = {op: float(gbps) * 1e9 for op, gbps in mb.get("ops", {}).items()}
        self.bytes_per_element = BYTES_PER_ELEMENT[profile.dtype]
        self.queued = profile.device.get("kind") == "cuda"
        self.issue_per_kernel_s = float(profile.device.get("issue_us_per_kernel", mb["overhead_us"])) * 1e-6
        self.factor = profile.time_factors()
        self.shared_cores = profile.device.get("shared_cores")   # a CPU run's ranks on one machine's cores

    def busy_speedup(self, busy: float) -> float:
        """How much faster a CPU rank computes while only this fraction of the run's ranks compute
        (the rest wait, as in a pipeline's fill and drain): the waiting ranks' cores go to the busy
        ones, each up to its own threads. 1 on a GPU, or where ranks do not share cores."""
        if not self.shared_cores:
            return 1.0
        cores, ranks, threads = (self.shared_cores[k] for k in ("cores", "processes", "threads"))
        return min(threads, cores / (ranks * busy)) / min(threads, cores / ranks)

    def _in_stream(self, isolated_s: float, latency_s: float, kind: str) -> float:
        """A kernel's time inside a step: its work (the measured time less the launch latency,
        floored at a tenth of it for points at the latency itself) and, on a CPU, the latency; each
        part scaled by the profile's calibration."""
        work = max(isolated_s - latency_s, 0.1 * isolated_s)
        latency = 0.0 if self.queued else (isolated_s - work) * self.factor["launch"]
        return work * self.factor[kind] + latency

    def issue_s(self, kernels: int) -> float:
        """The host's time to issue this many kernels into a GPU stream (a pass can go no faster);
        0 on a CPU, where every kernel's time already includes its dispatch. Per kernel: what the
        profiler measured the runtime's own layer to take (`device.issue_us_per_kernel`: Python,
        autograd and the dispatcher with each launch), else a lone kernel's launch latency."""
        return kernels * self.issue_per_kernel_s * self.factor["launch"] if self.queued else 0.0

    # --- GEMM -----------------------------------------------------------------
    def gemm_model_s(self, m: float, n: float, k: float, batch: float = 1) -> float:
        return gemm_roofline_s(m, n, k, batch, self.peak_flops, self.hbm_bytes_s, self.bytes_per_element,
                               self.e_max, self.k_half, self.gemm_overhead_s)

    @cached_property
    def _gemm_points(self) -> list[_Point]:
        out = []
        for p in self.profile.gemm["points"]:
            model = self.gemm_model_s(p["m"], p["n"], p["k"], p.get("batch", 1))
            coords = (_log2(p["m"]), _log2(p["n"]), _log2(p["k"]))
            out.append(_Point(coords, math.log(p["time_s"] / model)))
        return out

    def gemm_s(self, m: float, n: float, k: float, batch: float = 1) -> float:
        """Time of a (batch of) m×k · k×n product(s)."""
        base = self.gemm_model_s(m, n, k, batch)
        corr = _corrections(self._gemm_points, (_log2(m), _log2(n), _log2(k))) if batch == 1 else 0.0
        return self._in_stream(base * math.exp(corr), self.gemm_overhead_s, "gemm")

    def linear_s(self, tokens: float, d_in: float, d_out: float) -> tuple[float, float]:
        """(forward, backward) of a linear layer: y = xW; backward = dgrad + wgrad."""
        fwd = self.gemm_s(tokens, d_out, d_in)
        bwd = self.gemm_s(tokens, d_in, d_out) + self.gemm_s(d_in, d_out, tokens)
        return fwd, bwd

    # --- attention ------------------------------------------------------------
    @cached_property
    def _attn_points(self) -> tuple[list[_Point], list[_Point]]:
        fwd, bwd = [], []
        for p in self.profile.attention["points"]:
            f_model, b_model = self._flash_model_s(p["batch"], p["seq"], p["heads"], p["head_dim"])
            coords = (_log2(p["seq"]), _log2(p["head_dim"]), _log2(p["batch"] * p["heads"]))
            fwd.append(_Point(coords, math.log(p["fwd_s"] / f_model)))
            bwd.append(_Point(coords, math.log(p["bwd_s"] / b_model)))
        return fwd, bwd

    def _flash_model_s(self, batch: float, seq: float, heads: float, head_dim: float) -> tuple[float, float]:
        flops, scores, rows = flash_work(batch, seq, heads, head_dim)
        fwd = (flops / (self.peak_flops * self.attn_fwd_eff) + scores * self.attn_fwd_score_s
               + rows * self.attn_fwd_row_s + self.gemm_overhead_s)
        bwd = (FLASH_BWD_FLOPS * flops / (self.peak_flops * self.attn_bwd_eff) + scores * self.attn_bwd_score_s
               + rows * self.attn_bwd_row_s + 2 * self.gemm_overhead_s)
        return fwd, bwd

    def flash_attention_s(self, batch: float, seq: float, heads: float, head_dim: float) -> tuple[float, float]:
        """(forward, backward) of causal scaled_dot_product_attention on the local heads."""
        f, b = self._flash_model_s(batch, seq, heads, head_dim)
        coords = (_log2(seq), _log2(head_dim), _log2(batch * heads))
        pf, pb = self._attn_points
        return (self._in_stream(f * math.exp(_corrections(pf, coords)), self.gemm_overhead_s, "attention"),
                self._in_stream(b * math.exp(_corrections(pb, coords)), 2 * self.gemm_overhead_s, "attention"))

    # --- memory-bound ---------------------------------------------------------
    def memory_bound_s(self, nbytes: float, kernels: int = 1, op: str | None = None, fused: bool = False) -> float:
        """Element-wise kernels that move nbytes through memory, at the op's own measured
        bandwidth where the profile has one (LayerNorm, GeLU, residual add, rotary); `fused` (a
        compiled block): at the fastest of them, which a fused kernel moving only what its op must
        can reach."""
        if fused:
            bandwidth = max([self.membw_bytes_s, *self.op_bytes_s.values()])
        else:
            bandwidth = self.op_bytes_s.get(op, self.membw_bytes_s) if op else self.membw_bytes_s
        launches = 0.0 if self.queued else kernels * self.mem_overhead_s * self.factor["launch"]
        return nbytes / bandwidth * self.factor["memory_bound"] + launches
