"""Case files (DESIGN.md): a model, a cluster and a possibly partial layout, with what was measured.

`null` in `parallel` means "not published: let the search choose".
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from planner.errors import FlmplanError
from planner.specs import ClusterSpec, ModelSpec, get_gpu
from profiles.schema import read_json


class Strict(BaseModel):
    """Validated data that refuses unknown keys."""

    model_config = ConfigDict(extra="forbid")


class CaseModel(Strict):
    """A model shape as case files and plans write it (planner.specs.ModelSpec checks the rest)."""

    layers: int = Field(gt=0)
    hidden: int = Field(gt=0)
    heads: int = Field(gt=0)
    kv_heads: int | None = None
    ffn: int = Field(gt=0)
    vocab: int = Field(gt=0)
    seq: int = Field(gt=0)
    activation: Literal["gelu", "swiglu"] = "gelu"
    tied_embeddings: bool = True

    def spec(self) -> ModelSpec:
        return ModelSpec(**self.model_dump())


class CaseCluster(Strict):
    gpu: str
    gpus: int = Field(gt=0)
    gpus_per_node: int = Field(default=8, gt=0)


class CaseParallel(Strict):
    tp: int | None = None
    pp: int | None = None
    dp: int | None = None
    micro_batch: int | None = None
    global_batch: int = Field(gt=0)
    recompute: Literal["none", "selective", "full"] | None = None
    sequence_parallel: bool | None = None
    interleave: int | None = None
    zero: Literal[0, 1, 2, 3] | None = None


class CaseSoftware(Strict):
    """Facts about the training software that change kernel costs (not fitted constants).

    attention: "flash" or "unfused" (the s×s scores through HBM). Left out, it is "unfused" when
    the case asks for selective recompute — which exists to avoid storing those scores
    (Korthikanti et al. 2022) and means nothing under flash attention — and "flash" otherwise.
    """

    attention: Literal["flash", "unfused"] | None = None
    note: str = ""


class CaseMeasured(Strict):
    tflops_per_gpu_hfu: float | None = None
    iteration_s: float | None = None
    mfu: float | None = None


class Case(Strict):
    name: str = "case"
    source: str = ""
    note: str = ""
    model: CaseModel
    cluster: CaseCluster
    parallel: CaseParallel
    software: CaseSoftware = CaseSoftware()
    measured: CaseMeasured = CaseMeasured()

    def model_spec(self) -> ModelSpec:
        return self.model.spec()

    def attention_kernel(self) -> str:
        if self.software.attention is not None:
            return self.software.attention
        return "unfused" if self.parallel.recompute == "selective" else "flash"

    def cluster_spec(self) -> ClusterSpec:
        gpu = get_gpu(self.cluster.gpu)
        return ClusterSpec(gpu=gpu, gpus=self.cluster.gpus, gpus_per_node=self.cluster.gpus_per_node)


def first_error(err: ValidationError) -> str:
    """The first validation problem as 'where: what'."""
    e = err.errors()[0]
    where = ".".join(str(x) for x in e["loc"]) or "the top level"
    return f"{where}: {e['msg']}"


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
