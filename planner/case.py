"""Case files: a model, a cluster and a possibly partial layout, with what was measured.

`null` in `parallel` means "not published: let the search choose".
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from planner.errors import FlmplanError
from planner.jsonio import read_json
from planner.layouts import OPEN_FIELDS, PartialLayout
from planner.specs import ClusterSpec, Layout, ModelSpec, Software, get_gpu


class Strict(BaseModel):
    """Validated data that refuses unknown keys."""

    model_config = ConfigDict(extra="forbid")


def _case_parallel() -> type[Strict]:
    """The `parallel` table: Layout's fields, each null unless published (derived from Layout)."""
    hints = get_type_hints(Layout)
    open_fields = {name: (hints[name] | None, None) for name in OPEN_FIELDS}
    return create_model("CaseParallel", __base__=Strict, global_batch=(int, Field(gt=0)), **open_fields)


CaseParallel = _case_parallel()


class CaseCluster(Strict):
    gpu: str
    gpus: int = Field(gt=0)
    gpus_per_node: int = Field(default=8, gt=0)


class CaseSoftware(Strict):
    """Facts about the training software that change kernel costs (not fitted constants), as the
    run's source states them; a fact left null was not stated and takes planner.specs.Software's
    default (today's stacks).

    attention: "flash", or "unfused" (the s×s scores through HBM, as Megatron-LM ran before flash
    attention); a run that used unfused attention says so.
    """

    attention: Literal["flash", "unfused"] | None = None
    flash_attention: Literal[1, 2] | None = None
    overlap_grad_reduce: bool | None = None
    dropout: float | None = None
    # For facts the source leaves open (null above): the costliest value it allows, so that a
    # prediction can carry the range instead of an assumption that happens to fit.
    unstated_costliest: dict[Literal["flash_attention", "overlap_grad_reduce", "dropout"], bool | int | float] = {}
    note: str = ""

    def spec(self, costliest: bool = False) -> Software:
        """The stated facts (defaults for the rest); with `costliest`, the open ones at their
        costliest value."""
        facts = {k: v for k, v in self.model_dump(exclude={"attention", "note", "unstated_costliest"}).items()
                 if v is not None}
        if costliest:
            facts = {**self.unstated_costliest, **facts}
        return Software(**facts)


class CaseMeasured(Strict):
    tflops_per_gpu_hfu: float | None = None
    iteration_s: float | None = None
    mfu: float | None = None


class Case(Strict):
    name: str = "case"
    source: str = ""
    note: str = ""
    model: ModelSpec
    cluster: CaseCluster
    parallel: CaseParallel
    software: CaseSoftware = CaseSoftware()
    measured: CaseMeasured = CaseMeasured()

    def model_spec(self) -> ModelSpec:
        return self.model

    def attention_kernel(self) -> str:
        return self.software.attention or "flash"

    def software_spec(self, costliest: bool = False) -> Software:
        return self.software.spec(costliest)

    def partial_layout(self) -> PartialLayout:
        """The published layout, its unpublished fields left for the search."""
        return PartialLayout(**self.parallel.model_dump(), attention=self.attention_kernel())

    def cluster_spec(self) -> ClusterSpec:
        gpu = get_gpu(self.cluster.gpu)
        return ClusterSpec(gpu=gpu, gpus=self.cluster.gpus, gpus_per_node=self.cluster.gpus_per_node)


def first_error(err: ValidationError) -> str:
    """The first validation problem as 'where: what' (a spec's own sentence when it refused)."""
    e = err.errors()[0]
    where = ".".join(str(x) for x in e["loc"]) or "the top level"
    return f"{where}: {e['msg'].removeprefix('Value error, ')}"


def case_from_dict(raw: object, origin: str = "case") -> Case:
    try:
        return Case.model_validate(raw)
    except ValidationError as err:
        raise FlmplanError(f"{origin} is not a valid case file ({first_error(err)}).") from None


def load_case(path: str | Path) -> Case:
    return case_from_dict(read_json(path, "case file", FlmplanError), origin=f"Case file {path}")


def published_cases() -> list[Case]:
    """The published runs the project carries (planner/data/cases.json), with their sources."""
    raw = json.loads(resources.files("planner").joinpath("data/cases.json").read_text())
    return [case_from_dict(c, origin=f"published case {c.get('name')}") for c in raw["cases"]]
