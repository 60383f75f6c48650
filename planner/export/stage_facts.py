"""What every export target shares: the refusal that names each field a tool cannot express (or, with
`nearest`, the nearest thing it has, said in the file), and the facts of a stage every tool is told
the same way (steps, checkpoint interval, LayerNorm's ε after a growth, the data stream at a growth)."""

from __future__ import annotations

from planner.errors import FlmplanError
from planner.plan.plan_file import Plan

TARGETS = ("megatron", "torchtitan", "slurm")


# How the exports name each position encoding a tool may lack (planner/model/specs.py Position).
POSITION_NAMES = {"xpos": "xPos", "learned": "learned absolute positions"}


def joined(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class Missing:
    """The plan fields of one stage that a tool cannot express, gathered so that a refusal names all of
    them at once (unless the user accepts the nearest the tool has, `--nearest`)."""

    def __init__(self, where: str, tool: str, nearest: bool) -> None:
        self.where, self.tool, self.nearest = where, tool, nearest
        self.items: list[tuple[str, str]] = []

    def add(self, what: str, instead: str) -> None:
        self.items.append((what, instead))

    def refuse(self) -> None:
        if self.items and not self.nearest:
            raise Gaps(self)


class Gaps(FlmplanError):
    """A refusal of one stage's fields; `every_stage` joins those of all stages into one sentence."""

    def __init__(self, missing: Missing) -> None:
        self.missing = missing
        super().__init__(f"{missing.where} {joined([w for w, _ in missing.items])}, which {missing.tool} does not "
                         f"have; pass --nearest to export {joined([i for _, i in missing.items])} instead.")


def every_stage(plan: Plan, build) -> list:
    """build(k) for every stage, or one refusal that names every field of every stage the tool lacks."""
    out, gaps = [], []
    for k in range(len(plan.stages)):
        try:
            out.append(build(k))
        except Gaps as gap:
            gaps.append(gap.missing)
    if len(gaps) == 1:
        raise Gaps(gaps[0])
    if gaps:
        insteads = list(dict.fromkeys(i for g in gaps for _, i in g.items))
        parts = "; ".join(f"{g.where[0].lower()}{g.where[1:]} {joined([w for w, _ in g.items])}" for g in gaps)
        again = (" (or plan with rotary from the start: flmplan simulate … --position rotary)"
                 if any("xPos" in w for g in gaps for w, _ in g.items) else "")
        raise FlmplanError(f"{gaps[0].tool} does not have what this plan uses: {parts}; pass --nearest to export "
                           f"{joined(insteads)} instead{again}.")
    return out


def mup_nearest(st, missing: Missing) -> list[str]:
    """µP (per-group learning rates and multipliers) has no switch in either tool."""
    if st.parametrization.kind != "mup":
        return []
    missing.add("is parametrized by µP (parametrization.kind)", "standard parametrization")
    return [f"Standard parametrization in place of µP (base width {st.parametrization.base_width}): the learning "
            f"rate {st.lr:g} was tuned for µP and may not suit SP at this width."]


def exported_steps(st, missing: Missing, notes: list[str]) -> int:
    """The steps a tool trains for: the stage's, or with FreeLM's teacher steps left out (neither tool has
    FreeLM's teacher signal), said in the notes."""
    if st.objective.kind != "freelm":
        return st.steps
    teacher = st.objective.teacher_steps(st.steps)
    missing.add(f"trains FreeLM's teacher signal every {st.objective.teacher_every} steps (objective.kind)",
                "language modelling alone")
    notes.append(f"Language modelling alone where the plan trains FreeLM: its {teacher:,} teacher steps (every "
                 f"{st.objective.teacher_every}th) are left out, so {st.steps - teacher:,} steps train the plan's "
                 "language tokens and no more; the teacher head and its propositions are not exported.")
    return st.steps - teacher


def data_restart_note(k: int, tool: str, how: str) -> list[str]:
    """What a stage after the first reads: flmplan's runtime carries the data position across a growth;
    the tools start each stage's stream afresh."""
    if k == 0:
        return []
    return [f"Data: {tool} starts this stage's data stream afresh; flmplan's runtime would carry on where stage "
            f"{k} stopped. {how}"]


def checkpoint_every_steps(plan: Plan, k: int) -> int:
    """Steps between checkpoints: the simulation's interval (Daly's optimum, or the one given),
    in this stage's step time; 1,000 steps when the plan was not simulated."""
    interval_min = (plan.simulation or {}).get("checkpoint_interval_min")
    if not interval_min:
        return 1000
    return max(1, round(interval_min * 60 / plan.stages[k].predicted.step_s))


def grown_norm_eps(plan: Plan, k: int, first: float) -> float:
    """Stage k's norm ε in a tool's export, from the first stage's `first`: `flmplan grow` widens a residual
    stream so that its variance (LayerNorm) or mean square (RMSNorm) over d_new dimensions is d_old/d_new
    of the old one, and an ε scaled with it keeps the normalised values exact (runtime/growth/targets.py)."""
    return first * plan.stages[0].model.hidden / plan.stages[k].model.hidden
