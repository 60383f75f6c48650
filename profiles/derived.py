"""Built-in profiles of GPUs we cannot reach, derived from published figures.

Each profile has the schema of a measured one (`source: derived`); its few physical
parameters are set from the published rows or publications named beside them, one set per GPU
generation, no per-case constants. The fitted ones (FITTED) are fitted here, by code:
`python -m profiles.derived --fit` re-fits them to their rows of planner/data/cases.json (scipy's
bounded least squares on the cost model's relative errors), writes each value's provenance — rows,
start, bounds, optimiser, result, residual per row — to profiles/data/calibration/derived.json, and
the profiles from it; `python -m profiles.derived` rewrites the profiles from that record. The
profile's `references` are written from these values and sources, with each fit's residual.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from planner.cost.device_profile import Profile, save_profile
from planner.model.specs import GpuSpec, gpu_catalog

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
def _rows(gpus: tuple[str, ...]) -> tuple[str, ...]:
    """The published rows (planner/data/cases.json) run on these GPUs, less those held out of every fit
    (the production runs), scored out of sample."""
    from planner.layout.case import published_cases

    return tuple(c.name for c in published_cases() if c.cluster.gpu in gpus and c.kind == "benchmark")


_AMPERE_ROWS = _rows(("a100-40gb", "a100-80gb", "a800-80gb"))
_HOPPER_ROWS = _rows(("h100-80gb", "h200-141gb"))
_NCCL = Source("assumed", "nccl-tests and cuBLAS practice, not fitted")
_OVERLAP = Source("fitted", "one value for both generations, jointly with each one's gemm_e_max and membw",
                  _AMPERE_ROWS + _HOPPER_ROWS)
AMPERE = {
    "gemm_e_max": (None, Source("fitted", "jointly with membw and overlap_slowdown; the Megatron-LM and "
                                          "llm-foundry A100 rows", _AMPERE_ROWS)),
    "membw": (None, Source("fitted", "jointly with gemm_e_max and overlap_slowdown; the Megatron-LM and llm-foundry "
                                     "A100 rows", _AMPERE_ROWS)),
    "attn_fwd": (0.60, Source("published", "FlashAttention-2 (Dao, arXiv 2307.08691) A100 forward throughput")),
    "attn_bwd": (0.50, Source("published", "FlashAttention-2 (Dao, arXiv 2307.08691) A100 backward throughput")),
    "k_half": (48, _NCCL), "overhead_us": (6.0, _NCCL),
    "nvlink_busbw": (0.78, Source("published", "nccl-tests all-reduce on DGX A100: about 230 GB/s of 300 GB/s "
                                               "one-way NVLink")),
    "net_busbw": (0.85, Source("assumed", "HDR InfiniBand 200 Gb/s per GPU at 85 % of line rate")),
    "overlap_slowdown": (None, _OVERLAP),
}
HOPPER = {
    "gemm_e_max": (None, Source("fitted", "jointly with membw and overlap_slowdown; the llm-foundry H100 rows",
                                _HOPPER_ROWS)),
    "membw": (None, Source("fitted", "jointly with gemm_e_max and overlap_slowdown; the llm-foundry H100 rows",
                           _HOPPER_ROWS)),
    "attn_fwd": (0.38, Source("published", "FlashAttention-2 on H100: about 350 TFLOP/s forward "
                                           "(Dao, arXiv 2307.08691)")),
    "attn_bwd": (0.30, Source("published", "FlashAttention-2 on H100 backward (Dao, arXiv 2307.08691)")),
    "k_half": (48, _NCCL), "overhead_us": (5.0, _NCCL),
    "nvlink_busbw": (0.80, Source("published", "nccl-tests on DGX H100: about 360 GB/s all-reduce bus bandwidth")),
    "net_busbw": (0.85, Source("assumed", "NDR InfiniBand 400 Gb/s per GPU at 85 % of line rate")),
    "overlap_slowdown": (None, _OVERLAP),
}
GENERATIONS = {"ampere": AMPERE, "hopper": HOPPER}
GPU_GENERATION = {"a100-40gb": "ampere", "a100-80gb": "ampere", "a800-80gb": "ampere",
                  "h100-80gb": "hopper", "h200-141gb": "hopper", "b200": "blackwell"}

# What the calibration fits, jointly: (generation, parameter) → bounds. Bounds are physical: a GEMM
# reaches 40–90 % of the dense peak, element-wise kernels 30–90 % of HBM bandwidth, and overlapped
# communication slows the computation it hides under by 0–100 %.
FITTED = {("ampere", "gemm_e_max"): (0.4, 0.9), ("ampere", "membw"): (0.3, 0.9),
          ("hopper", "gemm_e_max"): (0.4, 0.9), ("hopper", "membw"): (0.3, 0.9),
          ("both", "overlap_slowdown"): (0.0, 1.0)}
# Where the fit starts: the middle of each range (no hand-picked start to steer it).
START = {key: round((lo + hi) / 2, 3) for key, (lo, hi) in FITTED.items()}
CALIBRATION = Path(__file__).parent / "data" / "calibration" / "derived.json"
DIGITS = 3       # fitted values are rounded to this many decimals, so a re-fit writes the same bytes


def fitted_rows() -> tuple[str, ...]:
    """Every row some fitted value is fitted to, in a fixed order."""
    rows: list[str] = []
    for gen in GENERATIONS.values():
        for _, src in gen.values():
            if src.how == "fitted":
                rows += [r for r in src.rows if r not in rows]
    return tuple(rows)


def generation(key: str, values: dict | None = None) -> dict:
    """The parameters (value, Source) of a GPU's generation, fitted ones from `values` (default: the
    calibration record). No published training rows exist for B200: Hopper's values on its data-sheet
    peaks, an assumption throughout."""
    values = values if values is not None else calibrated_values()
    gen = GPU_GENERATION[key]
    base = HOPPER if gen == "blackwell" else GENERATIONS[gen]
    name = "hopper" if gen == "blackwell" else gen
    out = {}
    for param, (value, src) in base.items():
        if value is None:
            value = values[(name, param)] if (name, param) in values else values[("both", param)]
        out[param] = (value, src)
    if gen == "blackwell":
        out = {k: (v, Source("assumed", f"Hopper's value ({src.how} there); no published B200 training rows"))
               for k, (v, src) in out.items()}
    return out


def calibrated_values() -> dict:
    """The fitted values as the committed calibration record has them."""
    return values_of(json.loads(CALIBRATION.read_text()))


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


def derived_profile(gpu: GpuSpec, residuals: dict[tuple[str, ...], str] | None = None,
                    values: dict | None = None) -> Profile:
    params = generation(gpu.key, values)
    p = {name: value for name, (value, _) in params.items()}
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
        references=references(params, residuals),
        notes="Derived from published figures, not measured; see profiles/derived.py and BENCHMARKS.md.",
    )


def row_errors(rows: tuple[str, ...], values: dict) -> list[float]:
    """The cost model's relative error on each row, every row costed with the derived profile of the
    GPU it ran on under the fitted `values`."""
    from planner.layout.case import published_cases
    from planner.layout.search import compare_to_published

    cases = {c.name: c for c in published_cases()}
    return [compare_to_published(cases[r], derived_profile(cases[r].cluster_spec().gpu, values=values))["error"]
            for r in rows]


def fit(leave_out: tuple[str, ...] = (), start: dict | None = None) -> dict:
    """Fit every FITTED value jointly to its rows (less `leave_out`): bounded least squares on the relative
    errors, from the middle of the bounds (or `start`). Returns the record calibration/derived.json holds."""
    from scipy.optimize import least_squares

    keys = list(FITTED)
    rows = tuple(r for r in fitted_rows() if r not in leave_out)

    def residuals(x) -> list[float]:
        return row_errors(rows, dict(zip(keys, x, strict=True)))

    start = start or START
    result = least_squares(residuals, [start[k] for k in keys], bounds=([FITTED[k][0] for k in keys],
                                                                         [FITTED[k][1] for k in keys]),
                           method="trf", diff_step=1e-3, xtol=1e-5, ftol=1e-6)
    values = {k: round(float(v), DIGITS) for k, v in zip(keys, result.x, strict=True)}
    errors = row_errors(rows, values)
    return {
        "note": "Written by `python -m profiles.derived --fit`; the derived profiles' fitted values and their "
                "provenance. Errors are the cost model's relative errors on each row with these values.",
        "optimiser": "scipy.optimize.least_squares (trf, bounded), relative errors of the published figure, "
                     f"finite differences (step 1e-3), xtol 1e-5 and ftol 1e-6 (finer than the values' {DIGITS} "
                     "decimals), values rounded to those decimals",
        "rows": list(rows),
        "values": [{"generation": g, "parameter": p, "value": values[(g, p)], "start": start[(g, p)],
                    "bounds": list(FITTED[(g, p)]),
                    "at_bound": values[(g, p)] in tuple(round(b, DIGITS) for b in FITTED[(g, p)])}
                   for g, p in keys],
        "residuals": {r: round(e, 4) for r, e in zip(rows, errors, strict=True)},
    }


def production_factors(values: dict) -> list[dict]:
    """The cost model on every production row (none is in any fit), with the fitted `values`: the
    step-time factors (measured / predicted) a plan draws its model error from (planner/cost/model_error.py)."""
    from planner.layout.case import published_cases
    from planner.layout.search import compare_to_published

    out = []
    for c in published_cases():
        if c.kind == "production":
            r = compare_to_published(c, derived_profile(c.cluster_spec().gpu, values=values))
            out.append({"case": c.name, "run": c.run_name, "step_factor": round(r["step_factor"], 4)})
    return out


def calibrate() -> dict:
    """The calibration record: the fit, and the production rows' factors under its values."""
    record = fit()
    record["production"] = production_factors(values_of(record))
    return record


def values_of(record: dict) -> dict:
    return {(v["generation"], v["parameter"]): v["value"] for v in record["values"]}


def leave_one_out(record: dict) -> dict[str, float]:
    """Each fitted row's out-of-sample error: the values re-fitted without it (from the full fit's values,
    which only speeds the fit), then the row predicted."""
    full = values_of(record)
    return {row: row_errors((row,), values_of(fit(leave_out=(row,), start=full)))[0] for row in record["rows"]}


def fit_residuals(values: dict | None = None) -> dict[tuple[str, ...], str]:
    """The cost model's error over each fitted parameter's rows, for the profiles' references."""
    from planner.plan.validation import rms

    values = values if values is not None else calibrated_values()
    out = {}
    for gen in GENERATIONS.values():
        for _, src in gen.values():
            if src.how == "fitted" and src.rows not in out:
                errors = row_errors(src.rows, values)
                out[src.rows] = f"rms {rms(errors):.1%}, worst {max(errors, key=abs):+.1%} (benchmarks/fidelity.py)"
    return out


def write_all(folder: Path | None = None, values: dict | None = None) -> list[Path]:
    folder = folder or Path(__file__).parent / "data"
    residuals = fit_residuals(values)
    return [save_profile(derived_profile(g, residuals, values), folder / f"{key}.json")
            for key, g in gpu_catalog().items()]


def write_calibration(record: dict, path: Path = CALIBRATION) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


if __name__ == "__main__":
    import sys

    if "--fit" in sys.argv:
        print(write_calibration(calibrate()))
    for path in write_all():
        print(path)
