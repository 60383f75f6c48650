"""The profile file: what a device delivers for the decoder core, measured or derived.

Pure Python on purpose (no pydantic, numpy or torch): the profiler writes it on bare GPU
images and the planner reads it without torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from planner.errors import FlmplanError
from planner.jsonio import read_json, write_json

SCHEMA = "flmplan-profile"
SCHEMA_VERSION = 1
SOURCES = ("measured", "derived", "refit")
DTYPES = ("bf16", "fp16", "fp32")
BYTES_PER_ELEMENT = {"bf16": 2, "fp16": 2, "fp32": 4}
# The kinds of time a calibration scales (Profile.calibration): kernels, collectives, and the
# runtime's measured host time around tensor parallelism and selective recompute ("host").
CALIBRATED_KINDS = ("gemm", "attention", "memory_bound", "launch", "collectives", "host")


def bus_factor(op: str, n: int) -> float:
    """Bytes each rank puts on the wire per byte of message, over n ranks: the factor between
    algorithm and bus bandwidth that nccl-tests use (ring all-reduce 2(n−1)/n; all-gather and
    reduce-scatter (n−1)/n; point-to-point 1). The profiles' busbw_gbps mean this."""
    if op == "all_reduce":
        return 2 * (n - 1) / n
    if op in ("all_gather", "reduce_scatter"):
        return (n - 1) / n
    return 1.0


class ProfileError(FlmplanError):
    """A file that is not a usable profile; the message says why and what to do."""


@dataclass(eq=False)
class Profile:
    """Tables of one device type. Times in seconds, bandwidths in GB/s, throughputs in TFLOP/s.

    device:      name, kind, count, peak_tflops, …; on a measured GPU issue_us_per_kernel (the host's
                 time per kernel to issue the runtime's layer) with its issue_probe;
    gemm:        e_max, k_half, overhead_us (the fitted shape model) and measured points
                 {m, n, k, time_s};
    attention:   fwd_eff, bwd_eff (fraction of peak on the FLOPs the kernel executes), optionally
                 fwd_score_ps, bwd_score_ps, fwd_row_ps, bwd_row_ps (picoseconds per score and per
                 query row of the work that does not grow with the head dimension) and points
                 {batch, seq, heads, head_dim, causal, fwd_s, bwd_s};
    memory_bound: bandwidth_gbps, overhead_us and points {op, bytes, time_s};
    collectives: intra_node / inter_node: {busbw_gbps, latency_us, points {op, ranks, bytes, time_s}};
                 inter_node busbw_gbps is per GPU (its own NIC); a measured tier also has each
                 op's own fit, ops {op: {busbw_gbps, latency_us}}, which intra-node groups use;
    layers:      whole-layer ground truth {hidden, heads, ffn, seq, micro_batch, forward_s,
                 backward_s, backward_recompute_s, spread, host_s};
    timing:      how the points were timed and how still they held (spreads, a layer measured twice);
    calibration: time_factors {gemm, attention, memory_bound, launch, collectives}: how much longer each kind of
                 kernel takes inside a training step than the points say (1 = as measured), fitted
                 by `flmplan profile --refit` to measured runs, which it names.
    """

    name: str
    source: str
    dtype: str
    device: dict[str, Any]
    gemm: dict[str, Any]
    attention: dict[str, Any]
    memory_bound: dict[str, Any]
    collectives: dict[str, Any]
    layers: list[dict[str, Any]] = field(default_factory=list)
    timing: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    date: str = ""
    host: str = ""
    software: dict[str, Any] = field(default_factory=dict)
    references: list[str] = field(default_factory=list)
    notes: str = ""

    @property
    def peak_tflops(self) -> float:
        return float(self.device["peak_tflops"])

    @property
    def hbm_gbps(self) -> float:
        return float(self.device["hbm_gbps"])

    def time_factors(self) -> dict[str, float]:
        given = self.calibration.get("time_factors", {})
        return {kind: float(given.get(kind, 1.0)) for kind in CALIBRATED_KINDS}

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "version": SCHEMA_VERSION, **asdict(self)}


_REQUIRED = {
    "device": ("name", "kind", "count", "peak_tflops", "hbm_gbps"),
    "gemm": ("e_max", "k_half", "overhead_us", "points"),
    "attention": ("fwd_eff", "bwd_eff", "points"),
    "memory_bound": ("bandwidth_gbps", "overhead_us", "points"),
}


def profile_from_dict(raw: Any, origin: str = "profile") -> Profile:
    """Validate a decoded JSON document and build the Profile, or say what is wrong."""
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
        raise ProfileError(f"{origin} is not an flmplan profile (no \"schema\": \"{SCHEMA}\"); "
                           "make one with `flmplan profile`.")
    if raw.get("version") != SCHEMA_VERSION:
        raise ProfileError(f"{origin} has profile schema version {raw.get('version')!r} but this flmplan "
                           f"reads version {SCHEMA_VERSION}; measure it again with `flmplan profile`.")
    if raw.get("source") not in SOURCES:
        raise ProfileError(f"{origin}: source must be one of {SOURCES}, got {raw.get('source')!r}.")
    if raw.get("dtype") not in DTYPES:
        raise ProfileError(f"{origin}: dtype must be one of {DTYPES}, got {raw.get('dtype')!r}.")
    for section, keys in _REQUIRED.items():
        block = raw.get(section)
        if not isinstance(block, dict):
            raise ProfileError(f"{origin} has no {section!r} table; it is truncated or not a profile.")
        missing = [k for k in keys if k not in block]
        if missing:
            raise ProfileError(f"{origin}: the {section!r} table lacks {', '.join(missing)}.")
    coll = raw.get("collectives")
    if not isinstance(coll, dict) or not all(
        isinstance(coll.get(k), dict) and "busbw_gbps" in coll[k] and "latency_us" in coll[k]
        for k in ("intra_node", "inter_node")
    ):
        raise ProfileError(f"{origin}: the 'collectives' table needs intra_node and inter_node "
                           "entries with busbw_gbps and latency_us.")
    for section, key in (("device", "peak_tflops"), ("device", "hbm_gbps"), ("gemm", "e_max"),
                         ("attention", "fwd_eff"), ("attention", "bwd_eff"),
                         ("memory_bound", "bandwidth_gbps")):
        value = raw[section][key]
        if not isinstance(value, int | float) or value <= 0:
            raise ProfileError(f"{origin}: {section}.{key} must be a positive number, got {value!r}.")
    fields = {k: v for k, v in raw.items() if k not in ("schema", "version")}
    try:
        return Profile(**fields)
    except TypeError as err:
        raise ProfileError(f"{origin} has fields this flmplan does not know ({err}).") from None


def load_profile(path: str | Path) -> Profile:
    return profile_from_dict(read_json(path, "profile", ProfileError), origin=f"Profile {path}")


def save_profile(profile: Profile, path: str | Path) -> Path:
    return write_json(profile.to_json(), path)


def builtin_profile_names() -> list[str]:
    folder = resources.files("profiles").joinpath("data")
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def builtin_profile(name: str) -> Profile:
    """A profile shipped with flmplan, by name (for derived ones: the GPU catalog key)."""
    names = builtin_profile_names()
    if name not in names:
        raise ProfileError(f"No built-in profile {name!r}; shipped: {', '.join(names)}.")
    raw = json.loads(resources.files("profiles").joinpath(f"data/{name}.json").read_text())
    return profile_from_dict(raw, origin=f"built-in profile {name}")


# A measured profile is trusted when the layer it measures twice, at the start and the end of the sweep,
# agrees within this (the device held still), and its fitted per-call overheads are physical (a kernel's
# launch and tail are microseconds, not milliseconds).
REPEAT_TOLERANCE = 0.03
MAX_OVERHEAD_US = 1000.0


def profile_quality(profile: Profile) -> tuple[str, list[str]]:
    """One line on how far a profile can be trusted, and its problems (none: trusted)."""
    if profile.source == "derived":
        return "derived from published training runs (profiles/derived.py), not measured", []
    if profile.source == "refit":
        cal = profile.calibration
        where = (f"held-out rms {cal['rms_held_out_after']:.1%}" if "rms_held_out_after" in cal
                 else f"fitted rms {cal.get('rms_fitted_after', 0.0):.1%}, no run held out")
        return f"refit to {len(cal.get('fitted_to', []))} measured run(s), {where}", []
    timing, problems = profile.timing, []
    repeat = timing.get("repeat", {})
    if repeat and abs(repeat["difference"]) > REPEAT_TOLERANCE:
        problems.append(f"the layer {repeat['layer']} measured {repeat['difference']:+.1%} apart at the start and the "
                        f"end of the sweep (over {REPEAT_TOLERANCE:.0%}): the device was not quiet")
    for kind, part in (("GEMM", profile.gemm), ("memory-bound", profile.memory_bound)):
        if part.get("overhead_us", 0.0) > MAX_OVERHEAD_US:
            problems.append(f"its fitted {kind} per-call overhead is {part['overhead_us'] / 1000:.1f} ms, more than "
                            "a kernel's launch can be: the timings were disturbed")
    line = (f"measured {profile.date or 'on an unknown date'}; points' median spread "
            f"{timing.get('median_spread', 0.0):.1%}" + (f", the repeated layer {repeat['difference']:+.1%} apart"
                                                         if repeat else ""))
    return line, problems
