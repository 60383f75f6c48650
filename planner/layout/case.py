"""Case files: a model, a cluster and a possibly partial layout, with what was measured.

`null` in `parallel` means "not published: let the search choose".
"""

from __future__ import annotations

import json
from dataclasses import fields, replace
from importlib import resources
from pathlib import Path
from typing import Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from planner.errors import FlmplanError
from planner.jsonio import read_json
from planner.layout.candidates import OPEN_FIELDS, PartialLayout
from planner.layout.era import Stack, era_defaults
from planner.model.specs import ClusterSpec, Layout, ModelSpec, Software, get_gpu


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
    # The network per GPU where the run's differs from the catalog's for its GPU (Gb/s per GPU: an AWS
    # p4d's 400 Gb/s of EFA per 8 A100s is 50, a DGX A100's HDR InfiniBand 200).
    network_gbps: float | None = Field(default=None, gt=0)


class _SoftwareTable(Strict):
    """Facts about the training software that change kernel costs (not fitted constants), as the
    run's source states them: the fields of planner.model.specs.Software, each null when the source does
    not state it (then it takes Software's default, today's stacks).

    attention: "flash", or "unfused" (the s×s scores through HBM, as Megatron-LM ran before flash
    attention); a run that used unfused attention says so. unstated_costliest: for facts left
    null, the costliest value the source allows, so that a prediction can carry the range instead
    of an assumption that happens to fit.
    """

    attention: Literal["flash", "unfused"] | None = None
    unstated_costliest: dict[str, bool | int | float] = {}
    note: str = ""

    @model_validator(mode="after")
    def _facts_are_software(self) -> _SoftwareTable:
        self.spec(costliest=True)         # Software checks every value; unknown names are refused
        return self

    def stated(self) -> dict:
        """The software facts the source states (the non-null fields of Software)."""
        return {f.name: getattr(self, f.name) for f in fields(Software) if getattr(self, f.name) is not None}

    def spec(self, costliest: bool = False) -> Software:
        """The stated facts (defaults for the rest); with `costliest`, the open ones at their
        costliest value."""
        facts = self.stated()
        if costliest:
            unknown = set(self.unstated_costliest) - {f.name for f in fields(Software)}
            if unknown:
                raise ValueError(f"software.unstated_costliest names no software fact: {', '.join(sorted(unknown))}")
            facts = {**self.unstated_costliest, **facts}
        return Software(**facts)


def _case_software() -> type[_SoftwareTable]:
    hints = get_type_hints(Software)
    facts = {f.name: (hints[f.name] | None, None) for f in fields(Software)}
    return create_model("CaseSoftware", __base__=_SoftwareTable, **facts)


CaseSoftware = _case_software()


class CaseMeasured(Strict):
    tflops_per_gpu_hfu: float | None = None
    iteration_s: float | None = None
    mfu: float | None = None


class Case(Strict):
    name: str = "case"
    source: str = ""
    note: str = ""
    # A benchmark table (the best layout its authors found; the cost model's values are fitted to these
    # rows, profiles/derived.py) or a production run (what a model was trained with; never fitted, always
    # scored out of sample, and the source of the model's error in a plan: planner/cost/model_error.py).
    kind: Literal["benchmark", "production"] = "benchmark"
    # Rows of one run (one model trained on different cluster sizes) share it: they are left out together.
    run: str = ""
    # When the run trained (YYYY-MM) and on what stack: a production row's open facts take that era's
    # defaults (planner/layout/era.py), not the fastest choice.
    era: str | None = Field(default=None, pattern=r"^\d{4}-\d{2}$")
    stack: Stack | None = None
    # Each field the row had to assume or derive, with why (the rest is the source's own).
    assumed: dict[str, str] = {}
    model: ModelSpec
    cluster: CaseCluster
    parallel: CaseParallel
    software: CaseSoftware = CaseSoftware()
    measured: CaseMeasured = CaseMeasured()

    @model_validator(mode="after")
    def _production_names_its_era(self) -> Case:
        if self.kind == "production" and (self.era is None or self.stack is None):
            raise ValueError("a production row names its era (YYYY-MM) and stack, whose defaults fill its open facts")
        return self

    @property
    def run_name(self) -> str:
        return self.run or self.name

    def era_defaults(self) -> dict[str, object]:
        """The facts this row leaves open, at its era's and stack's defaults (none for a benchmark row)."""
        if self.kind != "production":
            return {}
        defaults = era_defaults(self.era, self.stack)
        stated = {**self.parallel.model_dump(exclude_none=True), **self.software.stated(),
                  **({"attention": self.software.attention} if self.software.attention else {})}
        return {k: v for k, v in defaults.items() if k not in stated}

    def model_spec(self) -> ModelSpec:
        return self.model

    def attention_kernel(self) -> str:
        return self.software.attention or self.era_defaults().get("attention", "flash")

    def software_spec(self, costliest: bool = False) -> Software:
        era = {k: v for k, v in self.era_defaults().items() if k in {f.name for f in fields(Software)}}
        return replace(self.software.spec(costliest), **{k: v for k, v in era.items()
                                                          if not (costliest and k in self.software.unstated_costliest)})

    def partial_layout(self) -> PartialLayout:
        """The published layout, its unpublished fields at the era's defaults (production) or left for
        the search."""
        era = self.era_defaults()
        given = self.parallel.model_dump()
        given.update({k: v for k, v in era.items() if k in given and given[k] is None})
        if given["ends_in_split"] is None and (self.kind == "benchmark" or given["pp"] == 1):
            given["ends_in_split"] = False      # an even split unless the case says otherwise
        return PartialLayout(**given, attention=self.attention_kernel())

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
