"""What people and programs see: rich tables in the terminal and JSON documents."""

from __future__ import annotations

from dataclasses import asdict

from rich.console import Console
from rich.table import Table

from planner.case import Case
from planner.search import SearchResult

_LAYOUT_FIELDS = ("tp", "pp", "dp", "micro_batch", "recompute", "sequence_parallel", "interleave", "zero")


def chosen_fields(case: Case, result: SearchResult) -> dict:
    """Layout fields the case left null, with what the search chose."""
    given = case.parallel.model_dump()
    chosen = result.best.layout.to_dict()
    return {k: chosen[k] for k in _LAYOUT_FIELDS if given.get(k) is None}


def estimate_json(case: Case, result: SearchResult) -> dict:
    est = result.best
    return {
        "case": case.name,
        **est.to_dict(),
        "chosen": chosen_fields(case, result),
        "layouts_considered": result.considered,
        "layouts_rejected": dict(result.rejected),
        "measured": case.measured.model_dump(),
    }


def print_estimate(console: Console, case: Case, result: SearchResult) -> None:
    est = result.best
    model = est.model
    console.print(
        f"[bold]{case.name}[/]: {model.params() / 1e9:.1f}B parameters "
        f"({model.layers}×{model.hidden}, {model.heads} heads, seq {model.seq}) on "
        f"{est.cluster.gpus} × {est.cluster.gpu.key}; profile {est.profile_name}"
    )
    chosen = chosen_fields(case, result)
    note = f" (searched {result.considered} layouts; chose {chosen})" if chosen else ""
    console.print(f"layout: {est.layout.describe()}{note}")

    t = Table(title="Predicted step", show_header=True, header_style="bold")
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_column("published", justify="right")
    meas = case.measured
    t.add_row("iteration", f"{est.iteration_s:.3f} s", _fmt(meas.iteration_s, "{:.3f} s"))
    t.add_row("tokens / s", f"{est.tokens_per_s:,.0f}", "")
    t.add_row("TFLOP/s per GPU (HFU, recompute counted)", f"{est.tflops_per_gpu_hfu:.1f}",
              _fmt(meas.tflops_per_gpu_hfu, "{:.1f}"))
    t.add_row("TFLOP/s per GPU (MFU, model FLOPs)", f"{est.tflops_per_gpu_mfu:.1f}", "")
    t.add_row("MFU / HFU", f"{est.mfu:.1%} / {est.hfu:.1%}", _fmt(meas.mfu, "{:.1%}"))
    t.add_row("memory per GPU", f"{est.memory_gib_per_gpu:.1f} of {est.cluster.gpu.memory_gib:g} GiB", "")
    console.print(t)

    b = Table(title="Where the step goes", header_style="bold")
    b.add_column("part")
    b.add_column("seconds", justify="right")
    b.add_column("share", justify="right")
    for name, seconds in asdict(est.breakdown).items():
        b.add_row(name.removesuffix("_s").replace("_", " "), f"{seconds:.3f}", f"{seconds / est.iteration_s:.1%}")
    console.print(b)


def _fmt(value: float | None, pattern: str) -> str:
    return pattern.format(value) if value is not None else ""
