"""Built-in profiles of GPUs we cannot reach, derived from published figures.

Each profile has the schema of a measured one (`source: derived`); its few physical
parameters are set from the published rows or publications named beside them, one set per GPU
generation, no per-case constants. The profile's `references` are written from these values
and sources, with each fit's residual. Regenerate the files with `python -m profiles.derived`
after changing a parameter here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from planner.specs import GpuSpec, gpu_catalog
from profiles.schema import Profile, save_profile

DATE = "2026-11-28"


@dataclass(frozen=True)
class Source:
    """How a parameter got its value: fitted to published rows (case names of
    planner/data/cases.json), taken from a publication, or assumed."""

    how: Literal["fitted", "published", "assumed"]
    where: str
    rows: tuple[str, ...] = ()


# Parameters per GPU generation, each with its source.
#   gemm_e_max   — large bf16 GEMM efficiency; k_half — smallest GEMM dimension at which
#                  efficiency is half of e_max; overhead_us — launch + tail per GEMM;
#   attn_fwd/bwd — flash-attention efficiency on the FLOPs it executes (causal half);
#   membw        — achieved fraction of HBM bandwidth by element-wise kernels;
#   nvlink_busbw — NCCL all-reduce bus bandwidth inside a node as a fraction of the
#                  one-direction NVLink bandwidth; net_busbw — fraction of the NIC line rate.
_A100_ROWS = ("llmfoundry-1b-s2048-8xa100-80gb", "llmfoundry-3b-s2048-8xa100-80gb", "llmfoundry-13b-s2048-8xa100-80gb")
_H100_ROWS = ("llmfoundry-1b-s2048-8xh100-80gb", "llmfoundry-3b-s2048-16xh100-80gb",
              "llmfoundry-13b-s2048-8xh100-80gb")
_NCCL = Source("assumed", "nccl-tests and cuBLAS practice, not fitted")
_OVERLAP = Source("fitted", "one value for both generations, jointly with gemm_e_max and membw (fits of each "
                            "generation alone gave 0.06 and 0.7)", _A100_ROWS + _H100_ROWS)
AMPERE = {
    "gemm_e_max": (0.675, Source("fitted", "jointly with membw; llm-foundry A100-80GB rows without recompute",
                                 _A100_ROWS)),
    "membw": (0.70, Source("fitted", "jointly with gemm_e_max; the Megatron-LM 2021 1.7B row (unfused "
                                     "attention, tp = 1) is the most sensitive check", _A100_ROWS)),
    "attn_fwd": (0.60, Source("published", "FlashAttention-2 (Dao, arXiv 2307.08691) A100 forward throughput")),
    "attn_bwd": (0.50, Source("published", "FlashAttention-2 (Dao, arXiv 2307.08691) A100 backward throughput")),
    "k_half": (48, _NCCL), "overhead_us": (6.0, _NCCL),
    "nvlink_busbw": (0.78, Source("published", "nccl-tests all-reduce on DGX A100: about 230 GB/s of 300 GB/s "
                                               "one-way NVLink")),
    "net_busbw": (0.85, Source("assumed", "HDR InfiniBand 200 Gb/s per GPU at 85 % of line rate")),
    "overlap_slowdown": (0.3, _OVERLAP),
}
HOPPER = {
    "gemm_e_max": (0.60, Source("fitted", "jointly with membw; llm-foundry H100-80GB rows without recompute",
                                _H100_ROWS)),
    "membw": (0.39, Source("fitted", "jointly with gemm_e_max; this low value absorbs the extra traffic of an eager "
                                     "PyTorch model (MPT)", _H100_ROWS)),
    "attn_fwd": (0.38, Source("published", "FlashAttention-2 on H100: about 350 TFLOP/s forward "
                                           "(Dao, arXiv 2307.08691)")),
    "attn_bwd": (0.30, Source("published", "FlashAttention-2 on H100 backward (Dao, arXiv 2307.08691)")),
    "k_half": (48, _NCCL), "overhead_us": (5.0, _NCCL),
    "nvlink_busbw": (0.80, Source("published", "nccl-tests on DGX H100: about 360 GB/s all-reduce bus bandwidth")),
    "net_busbw": (0.85, Source("assumed", "NDR InfiniBand 400 Gb/s per GPU at 85 % of line rate")),
    "overlap_slowdown": (0.3, _OVERLAP),
}
# No published training rows: Hopper's values on B200 data-sheet peaks, an assumption throughout.
BLACKWELL = {k: (v, Source("assumed", f"Hopper's value ({src.how} there); no published B200 training rows"))
             for k, (v, src) in HOPPER.items()}

GENERATION = {
    "a100-40gb": AMPERE, "a100-80gb": AMPERE, "a800-80gb": AMPERE,
    "h100-80gb": HOPPER, "h200-141gb": HOPPER, "b200": BLACKWELL,
}


def references(params: dict, residuals: dict[tuple[str, ...], str] | None = None) -> list[str]:
    """One line per parameter, written from its value and source (and, for a fitted one, the
    fit's residual over its rows when it was computed)."""
    lines = []
    for name, (value, src) in params.items():
        line = f"{name} = {value:g}: {src.how}, {src.where}"
        if src.rows:
            line += f"; from rows {', '.join(src.rows)}"
            if residuals and src.rows in residuals:
                line += f"; residual over them {residuals[src.rows]}"
        lines.append(line + ".")
    return lines


def derived_profile(gpu: GpuSpec, residuals: dict[tuple[str, ...], str] | None = None) -> Profile:
    p = {name: value for name, (value, _) in GENERATION[gpu.key].items()}
    nvlink_one_way = gpu.nvlink_gbps / 2
    return Profile(
        name=gpu.key,
        source="derived",
        dtype="bf16",
        date=DATE,
        host="",
        device={"name": gpu.name, "kind": "cuda", "count": gpu.gpus_per_node,
                "peak_tflops": gpu.peak_tflops_bf16, "hbm_gbps": gpu.hbm_tbps * 1000},
        software={},
        gemm={"e_max": p["gemm_e_max"], "k_half": p["k_half"], "overhead_us": p["overhead_us"], "points": []},
        attention={"fwd_eff": p["attn_fwd"], "bwd_eff": p["attn_bwd"], "points": []},
        memory_bound={"bandwidth_gbps": round(p["membw"] * gpu.hbm_tbps * 1000, 1), "overhead_us": 4.0,
                      "points": []},
        collectives={
            "intra_node": {"busbw_gbps": round(p["nvlink_busbw"] * nvlink_one_way, 1), "latency_us": 15.0,
                           "points": []},
            "inter_node": {"busbw_gbps": round(p["net_busbw"] * gpu.network_gbps / 8, 2), "latency_us": 30.0,
                           "points": []},
            "overlap_slowdown": p["overlap_slowdown"],
        },
        layers=[],
        references=references(GENERATION[gpu.key], residuals),
        notes="Derived from published figures, not measured; see profiles/derived.py and BENCHMARKS.md.",
    )


def fit_residuals(gpu: GpuSpec) -> dict[tuple[str, ...], str]:
    """The cost model's error on each fitted parameter's rows, every row costed with the derived
    profile of the GPU it ran on (the same generation's parameters)."""
    from planner.case import published_cases
    from planner.search import compare_to_published
    from planner.validate import rms

    cases = {c.name: c for c in published_cases()}
    out = {}
    for _, src in GENERATION[gpu.key].values():
        if src.how != "fitted" or src.rows in out:
            continue
        rows = [cases[r] for r in src.rows]
        errors = [compare_to_published(c, derived_profile(c.cluster_spec().gpu))["error"] for c in rows]
        out[src.rows] = f"rms {rms(errors):.1%}, worst {max(errors, key=abs):+.1%} (benchmarks/fidelity.py)"
    return out


def write_all(folder: Path | None = None) -> list[Path]:
    folder = folder or Path(__file__).parent / "data"
    return [save_profile(derived_profile(g, fit_residuals(g)), folder / f"{key}.json")
            for key, g in gpu_catalog().items()]


if __name__ == "__main__":
    for path in write_all():
        print(path)
