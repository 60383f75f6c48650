"""plan.json: the one contract between the planner and the runtime (DESIGN.md).

Versioned, validated on load (unknown keys refused), readable by a person.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, ValidationError

from planner.case import CaseModel, Strict, first_error
from planner.errors import FlmplanError
from planner.growth import msg_problem
from profiles.schema import read_json, write_json

PLAN_SCHEMA = "flmplan-plan"
PLAN_VERSION = 1


PlanModel = CaseModel


class PlanLayout(Strict):
    tp: int = Field(ge=1)
    pp: int = Field(ge=1)
    dp: int = Field(ge=1)
    micro_batch: int = Field(ge=1)
    global_batch: int = Field(ge=1)
    recompute: Literal["none", "selective", "full"] = "none"
    sequence_parallel: bool = False
    interleave: int = Field(default=1, ge=1)
    zero: Literal[0, 1, 2, 3] = 1
    attention: Literal["flash", "unfused"] = "flash"


class PlanGrowth(Strict):
    operator: Literal["msg"] = "msg"
    from_stage: int = Field(ge=0)
    dims: dict[Literal["hidden", "ffn", "heads", "layers"], list[int]]
    grow_steps: int = Field(ge=0)
    lr_rewarm_steps: int = Field(default=100, ge=0)


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
    model: PlanModel
    tokens: float = Field(gt=0)
    steps: int = Field(gt=0)
    lr: float = Field(default=3e-4, gt=0)
    layout: PlanLayout
    growth: PlanGrowth | None = None
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
    simulation: dict | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def to_json(self) -> dict:
        return self.model_dump(mode="json", by_alias=True)


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
    for k, st in enumerate(plan.stages):
        try:
            spec = st.model.spec()
        except FlmplanError as err:
            raise FlmplanError(f"{origin}, stage {k} ({st.name}): {err}") from None
        if k > 0 and st.growth is None:
            raise FlmplanError(f"{origin}, stage {k} ({st.name}) has no growth from the stage before it.")
        if k > 0 and (problem := msg_problem(plan.stages[k - 1].model.spec(), spec)):
            raise FlmplanError(f"{origin}, stage {k} ({st.name}) cannot be grown from stage {k - 1}: {problem}.")
        lay = st.layout
        if lay.global_batch % (lay.micro_batch * lay.dp):
            raise FlmplanError(
                f"{origin}, stage {k} ({st.name}): layout.global_batch = {lay.global_batch} is not a multiple of "
                f"micro_batch·dp = {lay.micro_batch}·{lay.dp}; the sequences left over would never be trained."
            )
    return plan


def load_plan(path: str | Path) -> Plan:
    return plan_from_dict(read_json(path, "plan", FlmplanError), origin=f"Plan {path}")


def save_plan(plan: Plan, path: str | Path) -> Path:
    return write_json(plan.to_json(), path)
