"""Built-in profiles of GPUs we cannot reach, derived from published figures.

Each profile has the schema of a measured one (`source: derived`); its few physical
parameters are set from the published rows named beside them (see BENCHMARKS.md), one set
per GPU generation, no per-case constants. Regenerate the files with
`python -m profiles.derived` after changing a parameter here.
"""

from __future__ import annotations

from pathlib import Path

from planner.specs import GpuSpec, gpu_catalog
from profiles.schema import Profile, save_profile

DATE = "2026-11-28"

# Parameters per GPU generation.
#   gemm_e_max   — large bf16 GEMM efficiency; k_half — smallest GEMM dimension at which
#                  efficiency is half of e_max; overhead_us — launch + tail per GEMM;
#   attn_fwd/bwd — flash-attention efficiency on the FLOPs it executes (causal half);
#   membw        — achieved fraction of HBM bandwidth by element-wise kernels;
#   nvlink_busbw — NCCL all-reduce bus bandwidth inside a node as a fraction of the
#                  one-direction NVLink bandwidth; net_busbw — fraction of the NIC line rate.
AMPERE = {
    "gemm_e_max": 0.685, "k_half": 48, "overhead_us": 6.0,
    "attn_fwd": 0.60, "attn_bwd": 0.50,
    "membw": 0.71, "nvlink_busbw": 0.78, "net_busbw": 0.85, "overlap_slowdown": 0.3,
    "refs": [
        "GEMM efficiency: llm-foundry A100-80GB 3b/13b/1b rows without recompute (MFU 0.60-0.62) and "
        "Megatron-LM 2021 Table 1 (Narayanan et al., arXiv 2104.04473) 529.6B and 1T rows (163 TFLOP/s)",
        "Flash attention: FlashAttention-2 (Dao, arXiv 2307.08691) A100 forward/backward throughput, "
        "checked against llm-foundry A100 rows at seq 2048",
        "Memory-bound bandwidth: 80 % of the HBM data-sheet figure; Megatron-LM 2021 Table 1 1.7B row "
        "(unfused attention, tp = 1) as the check",
        "Collectives: nccl-tests all-reduce bus bandwidth on DGX A100 (about 230 GB/s over 600 GB/s NVLink), "
        "HDR InfiniBand 200 Gb/s per GPU",
    ],
}
HOPPER = {
    "gemm_e_max": 0.60, "k_half": 48, "overhead_us": 5.0,
    "attn_fwd": 0.38, "attn_bwd": 0.30,
    "membw": 0.39, "nvlink_busbw": 0.80, "net_busbw": 0.85, "overlap_slowdown": 0.3,
    "refs": [
        "GEMM efficiency: llm-foundry H100-80GB rows (MPT 1b-70b, FSDP, bf16; MFU 0.36-0.44)",
        "Flash attention: FlashAttention-2 on H100 (about 350 TFLOP/s forward, Dao, arXiv 2307.08691)",
        "Memory-bound bandwidth: 80 % of 3.35 TB/s; collectives: nccl-tests on DGX H100 (about 360 GB/s "
        "all-reduce bus bandwidth), NDR InfiniBand 400 Gb/s per GPU",
    ],
}
BLACKWELL = {**HOPPER, "refs": [
    "No published training rows used: Hopper efficiencies applied to B200 data-sheet peaks [U]",
]}

GENERATION = {
    "a100-40gb": AMPERE, "a100-80gb": AMPERE, "a800-80gb": AMPERE,
    "h100-80gb": HOPPER, "h200-141gb": HOPPER, "b200": BLACKWELL,
}


def derived_profile(gpu: GpuSpec) -> Profile:
    p = GENERATION[gpu.key]
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
        references=p["refs"],
        notes="Derived from published figures, not measured; see profiles/derived.py and BENCHMARKS.md.",
    )


def write_all(folder: Path | None = None) -> list[Path]:
    folder = folder or Path(__file__).parent / "data"
    return [save_profile(derived_profile(g), folder / f"{key}.json") for key, g in gpu_catalog().items()]


if __name__ == "__main__":
    for path in write_all():
        print(path)
