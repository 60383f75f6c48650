"""A growth schedule and its parts: the search's settings (`Settings`), each stage's shape, tokens,
layout and loss (`StageRun`), the whole schedule's cost and days (`Schedule`), and the growth cap
the search keeps to."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from planner.errors import FlmplanError
from planner.model.specs import GpuSpec, Layout, ModelSpec, Software

SECONDS_PER_DAY = 86400.0


# search: the first stage's tokens are the loss model's choice; gstack: Du et al. 2024's guideline fixes them.
GROWTH_TIMINGS = ("search", "gstack")


# Published function-preserving growth multiplied parameters by ×2 to ×4 per growth (Staged
# Training, Shen et al. 2022; bert2BERT, Chen et al. 2022; LiGO, Wang et al. 2023; MSG, Yao et al.
# 2023; stacking, Du et al. 2024): its benefit past ×4 is not measured, so plans stop there by default.
LITERATURE_GROWTH_FACTORS = (2.0, 4.0)
DEFAULT_MAX_GROWTH_FACTOR = LITERATURE_GROWTH_FACTORS[1]


@dataclass(frozen=True)
class Settings:
    gpu: GpuSpec
    price_per_gpu_hour: float
    max_gpus: int
    target_params: float
    budget_usd: float
    global_batch: int = 2304
    grow_steps: int = 5000
    min_steps_after_growth: int = 1000
    min_first_stage_steps: int = 2000
    transition_hours: float = 0.5
    max_days: float = 60.0
    max_stages: int = 4
    cost_factor: float = 1.0      # > 1 to fit the budget at a failure-inflated cost (P90)
    max_growth_factor: float = DEFAULT_MAX_GROWTH_FACTOR   # largest parameter ratio of one growth
    attention: str = "flash"      # the kernel the run will use
    teacher_every: int = 0        # FreeLM: every k-th step a teacher batch (0: language modelling only)
    teacher_data: str | None = None   # FreeLM's propositions, written into the plan for the runtime
    growth_timing: str = "search"     # when to grow first: where the loss model puts it, or Du et al.'s guideline
    position: str = "xpos"            # the searched plans' position encoding (FLM-101B's own schedule keeps xPos)
    software: Software = field(default_factory=Software)   # what else of the stack changes kernel costs

    def __post_init__(self) -> None:
        if not (isinstance(self.budget_usd, int | float) and math.isfinite(self.budget_usd)) or self.budget_usd <= 0:
            raise FlmplanError(f"--budget must be a positive number of dollars, got {self.budget_usd}.")
        if self.price_per_gpu_hour <= 0:
            raise FlmplanError(f"--price must be positive, got {self.price_per_gpu_hour}.")
        if self.max_gpus < 1:
            raise FlmplanError(f"--max-gpus must be at least 1, got {self.max_gpus}.")
        if self.target_params <= 0:
            raise FlmplanError(f"--target-size must be positive, got {self.target_params}.")
        if self.global_batch < 1:
            raise FlmplanError(f"--global-batch must be at least 1 sequence, got {self.global_batch}.")
        if self.grow_steps < 0:
            raise FlmplanError(f"--grow-steps must not be negative, got {self.grow_steps}.")
        if self.max_days <= 0:
            raise FlmplanError(f"--max-days must be positive, got {self.max_days}.")
        if self.teacher_every == 1 or self.teacher_every < 0:
            raise FlmplanError(f"--teacher-every must be 0 (off) or at least 2, got {self.teacher_every}.")
        if self.max_growth_factor < 1:
            raise FlmplanError(f"--max-growth-factor must be at least 1, got {self.max_growth_factor}.")
        if self.position not in ("xpos", "rotary"):
            raise FlmplanError(f"--position must be xpos or rotary, got {self.position}.")
        if self.growth_timing not in GROWTH_TIMINGS:
            raise FlmplanError(f"--growth-timing must be one of {', '.join(GROWTH_TIMINGS)}, got {self.growth_timing}.")


@dataclass
class StageRun:
    """One stage, costed: its shape, layout estimate and tokens."""

    model: ModelSpec
    layout: Layout
    step_s: float
    tflops_hfu: float
    tflops_mfu: float
    mfu: float
    memory_gib: float
    tokens: float = 0.0
    loss_end: float = 0.0
    breakdown: dict = field(default_factory=dict)
    lr: float | None = None          # the peak learning rate the stage's source states, if any
    teacher_every: int = 0           # FreeLM's teacher batches: every k-th step (plan_file.py PlanObjective)

    def language_steps(self, global_batch: int) -> int:
        return math.ceil(self.tokens / (global_batch * self.model.seq))

    def steps(self, global_batch: int) -> int:
        """Optimizer steps: the language steps for `tokens`, and one teacher step after every k − 1 of them."""
        language = self.language_steps(global_batch)
        return language + (language // (self.teacher_every - 1) if self.teacher_every else 0)

    def seconds_per_token(self) -> float:
        """Seconds per language token: a teacher step costs a language step (the same batch and length;
        it skips the LM head's logits, a few % of a step at a 100K vocabulary: charged anyway, a slight
        over-estimate)."""
        extra = self.teacher_every / (self.teacher_every - 1) if self.teacher_every else 1.0
        return self.step_s / (self.layout.global_batch * self.model.seq) * extra

    def days(self, global_batch: int) -> float:
        return self.steps(global_batch) * self.step_s / SECONDS_PER_DAY


@dataclass
class Schedule:
    name: str
    stages: list[StageRun]
    gpus: int
    settings: Settings
    loss: float
    ramp_tokens: list[float] = field(default_factory=list)

    @property
    def tokens(self) -> float:
        return sum(s.tokens for s in self.stages)

    def stage_days(self) -> list[float]:
        return [s.days(s.layout.global_batch) for s in self.stages]

    @property
    def transitions(self) -> int:
        return len(self.stages) - 1

    @property
    def days(self) -> float:
        return sum(self.stage_days()) + self.transitions * self.settings.transition_hours / 24

    def stage_cost_usd(self, st: StageRun) -> float:
        return st.days(st.layout.global_batch) * 24 * self.gpus * self.settings.price_per_gpu_hour

    @property
    def gpu_hours(self) -> float:
        return self.days * 24 * self.gpus

    @property
    def cost_usd(self) -> float:
        return self.gpu_hours * self.settings.price_per_gpu_hour

    @property
    def compute_flops(self) -> float:
        return sum(6 * s.model.params() * s.tokens for s in self.stages)
