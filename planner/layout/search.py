"""Layout search: enumerate valid layouts → drop those that do not fit → keep the fastest.

Memory is checked before the step time (it is the cheaper of the two), and what was
rejected is counted by reason, so a refusal can say why nothing fits.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

from planner.cost.device_profile import Profile, builtin_profile
from planner.cost.step import StepEstimate, compute_lower_bound_s, estimate_step
from planner.errors import Infeasible, InvalidLayout
from planner.layout.candidates import PartialLayout, candidate_layouts, check_fixed_fields
from planner.layout.case import Case
from planner.model.memory import memory_per_gpu
from planner.model.specs import ClusterSpec, Layout, ModelSpec, Software, validate_layout


@dataclass
class SearchResult:
    best: StepEstimate
    considered: int
    rejected: Counter = field(default_factory=Counter)
    smallest_memory_gib: float = 0.0


def search_layout(model: ModelSpec, cluster: ClusterSpec, part: PartialLayout, profile: Profile,
                  software: Software = Software()) -> SearchResult:
    """The fastest layout that fits, among all that `part` allows, run by `software`."""
    check_fixed_fields(model, cluster, part)
    best: StepEstimate | None = None
    rejected: Counter = Counter()
    smallest = (float("inf"), None)
    capacity = cluster.gpu.memory_gib
    candidates = []
    for layout in candidate_layouts(model, cluster, part):
        try:
            validate_layout(model, cluster, layout)
        except InvalidLayout:
            rejected["invalid"] += 1
            continue
        candidates.append((compute_lower_bound_s(model, layout, profile, software), layout))
    considered = len(candidates) + rejected["invalid"]
    # Cheapest floor first: once the floor passes the best step found, nothing left can win.
    candidates.sort(key=lambda c: c[0])
    for i, (floor, layout) in enumerate(candidates):
        if best is not None and floor >= best.iteration_s:
            rejected["bounded"] += len(candidates) - i
            break
        memory = memory_per_gpu(model, layout)
        mem = memory.total_gib
        if mem < smallest[0]:
            smallest = (mem, layout)
        if mem > capacity:
            rejected["memory"] += 1
            continue
        est = estimate_step(model, cluster, layout, profile, memory, software)
        if best is None or est.iteration_s < best.iteration_s:
            best = est
    if best is None:
        if considered == 0 or smallest[1] is None:
            raise Infeasible(
                f"No valid parallel layout exists for this model on {cluster.gpus} GPUs with global batch "
                f"{part.global_batch}; change the GPU count or the batch."
            )
        lay: Layout = smallest[1]
        raise Infeasible(
            f"No layout fits in {capacity:g} GiB per GPU: the smallest needs {smallest[0]:.1f} GiB "
            f"({lay.describe()}); use more GPUs, a GPU with more memory, or a smaller model."
        )
    return SearchResult(best=best, considered=considered, rejected=rejected, smallest_memory_gib=smallest[0])


def on_network(profile: Profile, network_gbps: float | None, catalog_gbps: float) -> Profile:
    """The profile with its inter-node bandwidth scaled to a run's own network (per GPU)."""
    if network_gbps is None or network_gbps == catalog_gbps:
        return profile
    inter = dict(profile.collectives["inter_node"])
    inter["busbw_gbps"] = inter["busbw_gbps"] * network_gbps / catalog_gbps
    inter.pop("ops", None)          # a measured network's per-op fits are not this network's
    return replace(profile, collectives={**profile.collectives, "inter_node": inter})


def estimate_case(case: Case, profile: Profile | None = None, costliest: bool = False) -> SearchResult:
    """Estimate a case file: its fixed fields as given, its null fields searched; with `costliest`,
    the software facts its source leaves open at their costliest."""
    model, cluster = case.model_spec(), case.cluster_spec()
    profile = on_network(profile or builtin_profile(cluster.gpu.key), case.cluster.network_gbps,
                         cluster.gpu.network_gbps)
    part, software = case.partial_layout(), case.software_spec(costliest)
    if (layout := part.fixed()) is not None:
        validate_layout(model, cluster, layout)
        est = estimate_step(model, cluster, layout, profile, software=software)
        if not est.fits:
            raise Infeasible(
                f"The layout does not fit: it needs {est.memory_gib_per_gpu:.1f} GiB per GPU but a "
                f"{cluster.gpu.key} has {cluster.gpu.memory_gib:g} GiB; add tp/pp, zero or recompute."
            )
        return SearchResult(best=est, considered=1)
    return search_layout(model, cluster, part, profile, software)


def compare_to_published(case: Case, profile: Profile | None = None) -> dict:
    """The cost model against what the case's source published, in the source's own convention:
    TFLOP/s per GPU HFU-style (Megatron-LM, FLM-101B), MFU (llm-foundry), or the step time. Where
    the source leaves software facts open, also the error with them at their costliest."""
    def predicted(est) -> tuple[str, float, float]:
        if case.measured.tflops_per_gpu_hfu is not None:
            return "tflops_hfu", case.measured.tflops_per_gpu_hfu, est.tflops_per_gpu_hfu
        if case.measured.mfu is not None:
            return "mfu", case.measured.mfu, est.mfu
        return "iteration_s", case.measured.iteration_s, est.iteration_s

    est = estimate_case(case, profile).best
    metric, published, value = predicted(est)
    # measured / predicted step time: a rate (TFLOP/s, MFU) the inverse way round from a time
    step_factor = published / value if metric == "iteration_s" else value / published
    row = {"case": case.name, "run": case.run_name, "kind": case.kind, "metric": metric, "published": published,
           "predicted": value, "error": value / published - 1,
           # predicted speed / measured speed − 1: positive is optimistic, whatever the metric
           "speed_error": step_factor - 1, "step_factor": step_factor, "layout": est.layout.describe(),
           "memory_gib": est.memory_gib_per_gpu, "era_defaults": case.era_defaults()}
    if case.software.unstated_costliest:
        costliest = predicted(estimate_case(case, profile, costliest=True).best)[2]
        row["error_costliest"] = costliest / published - 1
    return row
