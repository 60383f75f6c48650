"""plan.json: the one contract between the planner and the runtime.

Versioned, validated on load (unknown keys refused), readable by a person. A stage's model and
layout are the planner's own ModelSpec and Layout, so the runtime trains what was planned.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator

from planner.errors import FlmplanError
from planner.growth.operators import msg_problem
from planner.jsonio import read_json, write_json
from planner.layout.case import Strict, first_error
from planner.model.specs import ClusterSpec, Layout, ModelSpec, get_gpu, validate_layout

PLAN_SCHEMA = "flmplan-plan"
PLAN_VERSION = 1


class PlanGrowth(Strict):
    operator: Literal["msg"] = "msg"
    from_stage: int = Field(ge=0)
    dims: dict[Literal["hidden", "ffn", "heads", "layers"], list[int]]
    grow_steps: int = Field(ge=0)
    lr_rewarm_steps: int = Field(default=100, ge=0)


class PlanParametrization(Strict):
    """How widths scale the model's init, learning rates and multipliers: "sp" (standard) or "mup"
    (Yang et al. 2022, Tensor Programs V; the runtime's rules are runtime/model/mup.py's). Under µP a
    stage's learning rate is the one tuned at base_width (`flmplan tune`)."""

    kind: Literal["sp", "mup"] = "sp"
    base_width: int = Field(default=256, gt=0)
    output_mult: float = Field(default=1.0, gt=0)
    attn_mult: float = Field(default=1.0, gt=0)

    def config_fields(self) -> dict:
        """The runtime model's fields for this parametrization."""
        return {"mup": self.kind == "mup", "mup_base_width": self.base_width, "mup_output_mult": self.output_mult,
                "mup_attn_mult": self.attn_mult}


class PlanObjective(Strict):
    """What a stage trains on: language modelling ("lm"), or FreeLM's objective (Li et al. 2023):
    every `teacher_every`-th step a teacher batch of true/false propositions from `teacher_data`
    (JSON lines; runtime/objectives/freelm.py), the other steps language modelling. Teacher steps cost what
    language steps cost, and the stage's `steps` count both."""

    kind: Literal["lm", "freelm"] = "lm"
    teacher_every: int = Field(default=0, ge=0)
    teacher_data: str | None = None

    @model_validator(mode="after")
    def _every(self) -> PlanObjective:
        if self.kind == "freelm" and self.teacher_every < 2:
            raise ValueError("a freelm objective needs teacher_every of at least 2 (every k-th step a teacher "
                             "batch, the others language)")
        if self.kind == "lm" and self.teacher_every:
            raise ValueError("teacher_every belongs to a freelm objective")
        return self

    def teacher_steps(self, steps: int) -> int:
        """How many of a stage's steps are teacher batches."""
        return steps // self.teacher_every if self.kind == "freelm" else 0


class PlanPredicted(Strict):
    step_s: float
    tflops_per_gpu_hfu: float
    tflops_per_gpu_mfu: float
    mfu: float
    days: float
    cost_usd: float
    memory_gib_per_gpu: float
    loss_end: float | None = None


class PlanStage(Strict):
    name: str
    model: ModelSpec
    tokens: float = Field(gt=0)
    steps: int = Field(gt=0)
    lr: float = Field(default=3e-4, gt=0)
    layout: Layout
    growth: PlanGrowth | None = None
    parametrization: PlanParametrization = Field(default_factory=PlanParametrization)
    objective: PlanObjective = Field(default_factory=PlanObjective)
    predicted: PlanPredicted


class PlanCluster(Strict):
    gpu: str
    gpus: int = Field(gt=0)
    gpus_per_node: int = Field(default=8, gt=0)
    price_per_gpu_hour: float = Field(gt=0)
    price_date: str = ""
    price_source: str = ""


class PlanTotals(Strict):
    days: float
    cost_usd: float
    tokens: float
    predicted_loss: float
    gpu_hours: float


class PlanBaseline(Strict):
    name: str
    shapes: list[str]
    tokens: float
    days: float
    cost_usd: float
    predicted_loss: float
    compute_flops: float
    gpus: int


class PlanDataSource(Strict):
    """One prepared corpus (Megatron-LM indexed dataset PREFIX.bin/.idx) and its weight in the mixture."""

    prefix: str
    weight: float = Field(gt=0)
    tokens: int = Field(ge=0)
    documents: int = Field(ge=0)


class PlanData(Strict):
    """The corpus a plan trains on (`flmplan simulate --data`): its sources and their common tokenizer.
    `flmplan run` reads it when no --data is given; the exports pass it on."""

    sources: list[PlanDataSource] = Field(min_length=1)
    tokenizer: dict
    tokens: int = Field(ge=0)
    epochs: float = Field(ge=0)

    def specs(self) -> list[str]:
        """The sources as --data items (WEIGHT:PREFIX)."""
        return [f"{s.weight:.6g}:{s.prefix}" for s in self.sources]


class Plan(Strict):
    schema_: Literal["flmplan-plan"] = Field(default=PLAN_SCHEMA, alias="schema")
    version: Literal[1] = PLAN_VERSION
    created: str = Field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    name: str = "plan"
    objective: str = ""
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    profile: dict = Field(default_factory=dict)
    cluster: PlanCluster
    stages: list[PlanStage] = Field(min_length=1)
    totals: PlanTotals
    baselines: list[PlanBaseline] = Field(default_factory=list)
    alternatives: list[PlanBaseline] = Field(default_factory=list)
    assumptions: dict = Field(default_factory=dict)
    advice: list[dict] = Field(default_factory=list)
    simulation: dict | None = None
    data: PlanData | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def to_json(self) -> dict:
        return self.model_dump(mode="json", by_alias=True)

    def language_sequences(self) -> int:
        """Sequences of the corpus the whole plan trains on (FreeLM's teacher steps draw none)."""
        return sum((st.steps - st.objective.teacher_steps(st.steps)) * st.layout.global_batch for st in self.stages)

    def freelm_stages(self) -> list[int]:
        return [k for k, st in enumerate(self.stages) if st.objective.kind == "freelm"]

    def with_teacher_data(self, source: str | None) -> Plan:
        """The plan with `source` (a propositions file's path, or "iq") as every FreeLM stage's
        teacher_data; the plan itself where `source` is None."""
        if source is None:
            return self
        raw = self.to_json()
        for k in self.freelm_stages():
            raw["stages"][k]["objective"]["teacher_data"] = source
        return plan_from_dict(raw)


# The learning-rate schedule of every stage, the runtime's and the exports': linear warm-up over
# FIRST_WARMUP_STEPS (the first stage) or the growth's lr_rewarm_steps, at most a fifth of the
# stage, then cosine decay to MIN_LR_FRACTION of the stage's peak.
FIRST_WARMUP_STEPS = 10
MIN_LR_FRACTION = 0.1


def stage_warmup_steps(stage: PlanStage) -> int:
    warmup = stage.growth.lr_rewarm_steps if stage.growth else FIRST_WARMUP_STEPS
    return min(warmup, max(1, stage.steps // 5))


def plan_fingerprint(plan: Plan) -> str:
    """What a checkpoint (or a finished run) must share with the plan that resumes it: each stage's
    model, layout, steps and growth (not names, predictions or prices)."""
    import hashlib
    import json

    keep = []
    for st in plan.stages:
        part = st.model_dump(mode="json", include={"model", "layout", "steps", "growth"})
        # µP and FreeLM change what is trained; the defaults keep the fingerprints of earlier plans.
        if st.parametrization.kind == "mup":
            part["parametrization"] = st.parametrization.model_dump(mode="json")
        if st.objective.kind == "freelm":
            part["objective"] = st.objective.model_dump(mode="json", exclude={"teacher_data"})
        keep.append(part)
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def plan_from_dict(raw: object, origin: str = "plan") -> Plan:
    if isinstance(raw, dict) and raw.get("schema") != PLAN_SCHEMA:
        raise FlmplanError(f"{origin} is not an flmplan plan (no \"schema\": \"{PLAN_SCHEMA}\"); "
                           "make one with `flmplan simulate --out plan.json`.")
    if isinstance(raw, dict) and raw.get("version") != PLAN_VERSION:
        raise FlmplanError(f"{origin} has plan version {raw.get('version')!r}; this flmplan reads version "
                           f"{PLAN_VERSION}. Plan it again with `flmplan simulate`.")
    try:
        plan = Plan.model_validate(raw)
    except ValidationError as err:
        raise FlmplanError(f"{origin} is not a valid plan ({first_error(err)}).") from None
    cluster = ClusterSpec(gpu=get_gpu(plan.cluster.gpu), gpus=plan.cluster.gpus,
                          gpus_per_node=plan.cluster.gpus_per_node)
    for k, st in enumerate(plan.stages):
        if k > 0 and st.growth is None:
            raise FlmplanError(f"{origin}, stage {k + 1} ({st.name}) has no growth from the stage before it.")
        if k > 0 and st.parametrization != plan.stages[k - 1].parametrization:
            raise FlmplanError(f"{origin}, stage {k + 1} ({st.name}) has another parametrization than stage {k}: "
                               "a growth keeps it (µP's multipliers follow the width by themselves).")
        if k > 0 and (problem := msg_problem(plan.stages[k - 1].model, st.model)):
            raise FlmplanError(f"{origin}, stage {k + 1} ({st.name}) cannot be grown from stage {k}: {problem}.")
        try:
            validate_layout(st.model, cluster, st.layout)
        except FlmplanError as err:
            raise FlmplanError(f"{origin}, stage {k + 1} ({st.name}): {err}") from None
    return plan


def load_plan(path: str | Path) -> Plan:
    return plan_from_dict(read_json(path, "plan", FlmplanError), origin=f"Plan {path}")


def save_plan(plan: Plan, path: str | Path) -> Path:
    return write_json(plan.to_json(), path)
