"""The whole run over days, with failures, checkpoints and restarts, as Monte Carlo (simpy).

Scenario: a plan's stages train one after another on `nodes` nodes. The job writes a
checkpoint every τ of training (Young 1974 / Daly 2006 by default) and takes δ to write it;
between stages it checkpoints, grows and reshards (the growth transition). Nodes fail as
independent exponential processes (failures per 1000 node-days); a failure interrupts
whatever the job is doing: the work since the last checkpoint is lost, a spare node replaces
the failed one (which goes to repair) or the job waits for a repaired node, and the job
restarts after the detection + restart time. Optional spot preemption comes with a notice:
when the notice covers a checkpoint write, nothing is lost. Cost is the wall time of the
nodes and the spares at the plan's price.

Only the events that matter are simulated: a stage's training between two interruptions is
one timeout, and the work it committed is worked out from the checkpoint period.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass, field

import simpy

from planner.cost.model_error import ModelError
from planner.errors import FlmplanError

DAY_S = 86400.0
MIN_S = 60.0


@dataclass(frozen=True)
class FailureModel:
    """Defaults from ANCHORS: 5 failures per 1000 node-days, 10 min detection + restart, 5 min
    checkpoint write (Kokolis et al. 2024), 5 % spare nodes."""

    failures_per_1000_node_days: float = 5.0
    restart_min: float = 10.0
    checkpoint_min: float = 5.0
    checkpoint_interval_min: float | None = None
    interval_rule: str = "daly"
    spare_fraction: float = 0.05
    repair_hours: float = 24.0
    spot_preemptions_per_day: float = 0.0
    spot_notice_min: float = 2.0

    def __post_init__(self) -> None:
        for name in ("failures_per_1000_node_days", "restart_min", "checkpoint_min", "spare_fraction",
                     "repair_hours", "spot_preemptions_per_day", "spot_notice_min"):
            if getattr(self, name) < 0:
                raise FlmplanError(f"--{name.replace('_', '-')} must not be negative, got {getattr(self, name)}.")
        if self.spare_fraction > 1:
            raise FlmplanError(f"--spare-fraction is a fraction of the nodes, at most 1; got {self.spare_fraction}.")
        if self.checkpoint_interval_min is not None and self.checkpoint_interval_min <= 0:
            raise FlmplanError("--checkpoint-interval-min must be positive.")
        if self.interval_rule not in ("daly", "young"):
            raise FlmplanError(f"checkpoint interval rule must be daly or young, got {self.interval_rule!r}.")

    def spare_nodes(self, nodes: int) -> int:
        """The spare fraction of the nodes, rounded, and at least one when spares are asked for."""
        return max(1, round(self.spare_fraction * nodes)) if self.spare_fraction > 0 else 0

    def mtbf_s(self, nodes: int) -> float:
        rate = nodes * self.failures_per_1000_node_days / 1000 / DAY_S
        return math.inf if rate == 0 else 1 / rate

    def interval_s(self, nodes: int) -> float:
        if self.checkpoint_interval_min is not None:
            return self.checkpoint_interval_min * MIN_S
        rule = daly_interval if self.interval_rule == "daly" else young_interval
        return rule(self.checkpoint_min * MIN_S, self.mtbf_s(nodes))


def young_interval(delta: float, mtbf: float) -> float:
    """Young 1974: τ = √(2δM)."""
    return math.sqrt(2 * delta * mtbf)


def daly_interval(delta: float, mtbf: float) -> float:
    """Daly 2006, eq. 37: τ = √(2δM)·[1 + ⅓√(δ/2M) + (δ/2M)/9] − δ for δ < 2M, else M."""
    if math.isinf(mtbf):
        return math.inf
    if delta >= 2 * mtbf:
        return mtbf
    x = delta / (2 * mtbf)
    return math.sqrt(2 * delta * mtbf) * (1 + math.sqrt(x) / 3 + x / 9) - delta


def analytic_ettr(delta: float, restart: float, tau: float, mtbf: float) -> float:
    """First-order effective training time ratio: useful work per wall second with a checkpoint
    every τ (costing δ) and failures every M on average, each costing the restart and on average
    half a checkpoint period of lost work: (1 − (R + (τ+δ)/2)/M) / (1 + δ/τ)."""
    return (1 - (restart + (tau + delta) / 2) / mtbf) / (1 + delta / tau)


@dataclass(frozen=True)
class StageWork:
    name: str
    work_s: float            # failure-free training time of the stage
    transition_s: float = 0  # checkpoint + grow + reshard after it (0 for the last stage)


@dataclass
class Trial:
    wall_s: float
    useful_s: float
    failures: int
    preemptions: int
    stage_wall_s: list[float]
    cost_usd: float
    step_factor: float = 1.0        # the cost model's error drawn for this trial (measured / predicted step)


@dataclass
class RunSummary:
    trials: list[Trial]
    budget_usd: float
    ideal_days: float
    ideal_cost: float
    interval_s: float
    model: FailureModel
    nodes: int
    stage_names: list[str] = field(default_factory=list)

    def quantile(self, values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    def to_dict(self, keep_costs: bool = True) -> dict:
        days = [t.wall_s / DAY_S for t in self.trials]
        costs = [t.cost_usd for t in self.trials]
        fails = [t.failures for t in self.trials]
        stage_days = {name: self.quantile([t.stage_wall_s[k] / DAY_S for t in self.trials], 0.5)
                      for k, name in enumerate(self.stage_names)}
        out = {
            "trials": len(self.trials),
            "days_p50": self.quantile(days, 0.5), "days_p90": self.quantile(days, 0.9), "days_ideal": self.ideal_days,
            "cost_p50": self.quantile(costs, 0.5), "cost_p90": self.quantile(costs, 0.9), "cost_ideal": self.ideal_cost,
            "stage_days_p50": stage_days,
            "ettr_mean": statistics.fmean(t.useful_s / t.wall_s for t in self.trials),
            "p_within_budget": sum(c <= self.budget_usd for c in costs) / len(costs),
            "failures_mean": statistics.fmean(fails), "failures_p90": self.quantile(fails, 0.9),
            "preemptions_mean": statistics.fmean(t.preemptions for t in self.trials),
            "checkpoint_interval_min": self.interval_s / MIN_S if math.isfinite(self.interval_s) else 0.0,
            "checkpoint_rule": (f"every {self.model.checkpoint_interval_min:g} min as given"
                                if self.model.checkpoint_interval_min is not None else self.model.interval_rule),
            "failures_per_1000_node_days": self.model.failures_per_1000_node_days,
            "restart_min": self.model.restart_min, "checkpoint_min": self.model.checkpoint_min,
            "spare_nodes": self.model.spare_nodes(self.nodes),
        }
        if keep_costs:
            out["costs"] = costs
        return out


class _Job:
    """One trial: the job process and the failure and preemption processes that interrupt it."""

    def __init__(self, env: simpy.Environment, stages: list[StageWork], nodes: int, fm: FailureModel,
                 rng: random.Random) -> None:
        self.env, self.stages, self.fm, self.rng = env, stages, fm, rng
        self.tau = fm.interval_s(nodes)
        self.delta = fm.checkpoint_min * MIN_S
        self.restart = fm.restart_min * MIN_S
        self.fail_rate = 0.0 if math.isinf(fm.mtbf_s(nodes)) else 1 / fm.mtbf_s(nodes)
        self.preempt_rate = fm.spot_preemptions_per_day / DAY_S
        self.spares = simpy.Container(env, init=fm.spare_nodes(nodes), capacity=max(1, fm.spare_nodes(nodes) + nodes))
        self.failures = self.preemptions = 0
        self.stage_wall: list[float] = []
        self.finished = False
        self.proc = env.process(self.run())
        if self.fail_rate > 0:
            env.process(self.interruptions(self.fail_rate, "failure"))
        if self.preempt_rate > 0:
            env.process(self.interruptions(self.preempt_rate, "preemption"))

    def committed(self, elapsed: float, remaining: float) -> float:
        """Training committed by checkpoints after `elapsed` seconds of a segment of `remaining` work."""
        if math.isinf(self.tau):
            return remaining if elapsed >= remaining else 0.0
        period = self.tau + self.delta
        return min(remaining, math.floor(elapsed / period) * self.tau)

    def trained(self, elapsed: float, remaining: float) -> float:
        """Training done (saved or not) after `elapsed` seconds of a segment."""
        if math.isinf(self.tau):
            return min(elapsed, remaining)
        period = self.tau + self.delta
        k = math.floor(elapsed / period)
        return min(remaining, k * self.tau + min(self.tau, elapsed - k * period))

    def segment_s(self, remaining: float) -> float:
        """Wall time to train `remaining` seconds with a checkpoint after every τ (none after the end)."""
        if math.isinf(self.tau):
            return remaining
        full = math.ceil(remaining / self.tau) - 1
        return remaining + max(0, full) * self.delta

    def run(self):
        for stage in self.stages:
            start = self.env.now
            remaining = stage.work_s
            while remaining > 1e-9:
                t0 = self.env.now
                try:
                    yield self.env.timeout(self.segment_s(remaining))
                    remaining = 0.0
                except simpy.Interrupt as stop:
                    elapsed = self.env.now - t0
                    saved = self.committed(elapsed, remaining)
                    if stop.cause == "preemption" and self.fm.spot_notice_min * MIN_S >= self.delta:
                        # The notice covers a checkpoint write: everything trained so far is kept.
                        saved = self.trained(elapsed, remaining)
                    remaining -= saved
                    yield from self.recover(stop.cause)
            while stage.transition_s > 0:
                try:
                    yield self.env.timeout(stage.transition_s)
                    break
                except simpy.Interrupt as stop:
                    yield from self.recover(stop.cause)
            self.stage_wall.append(self.env.now - start)
        self.finished = True

    def recover(self, cause: str):
        """Replace the node (a spare, or wait for a repair) and restart; a failure meanwhile starts over."""
        while True:
            try:
                if cause == "failure":
                    request = self.spares.get(1)
                    try:
                        yield request
                    except simpy.Interrupt:
                        request.cancel()
                        raise
                    self.env.process(self.repair())
                yield self.env.timeout(self.restart)
                return
            except simpy.Interrupt as stop:
                cause = stop.cause

    def repair(self):
        yield self.env.timeout(self.fm.repair_hours * 3600)
        yield self.spares.put(1)

    def interruptions(self, rate: float, cause: str):
        while True:
            yield self.env.timeout(self.rng.expovariate(rate))
            if self.finished:
                return
            if cause == "failure":
                self.failures += 1
            else:
                self.preemptions += 1
            self.proc.interrupt(cause)


def simulate_run(stages: list[StageWork], nodes: int, gpus_per_node: int, price_per_gpu_hour: float,
                 fm: FailureModel, rng: random.Random, step_factor: float = 1.0) -> Trial:
    """One run, its training `step_factor` times as long as the cost model predicts."""
    env = simpy.Environment()
    if step_factor != 1.0:
        stages = [StageWork(s.name, s.work_s * step_factor, s.transition_s) for s in stages]
    job = _Job(env, stages, nodes, fm, rng)
    env.run(until=job.proc)
    wall = env.now
    billed_gpus = (nodes + fm.spare_nodes(nodes)) * gpus_per_node
    return Trial(wall_s=wall, useful_s=sum(s.work_s for s in stages), failures=job.failures,
                 preemptions=job.preemptions, stage_wall_s=job.stage_wall,
                 cost_usd=wall / 3600 * billed_gpus * price_per_gpu_hour, step_factor=step_factor)


def monte_carlo(stages: list[StageWork], nodes: int, gpus_per_node: int, price_per_gpu_hour: float,
                fm: FailureModel, trials: int, seed: int, budget_usd: float,
                model_error: ModelError | None = None) -> RunSummary:
    """`trials` runs with failures; with `model_error`, each trial's step time also carries a factor
    drawn from the cost model's own error (its own random stream, so the failures stay the same)."""
    if trials < 1:
        raise FlmplanError(f"--trials must be at least 1, got {trials}.")
    rng, error_rng = random.Random(seed), random.Random(seed + 1)
    results = [simulate_run(stages, nodes, gpus_per_node, price_per_gpu_hour, fm, rng,
                            model_error.draw(error_rng) if model_error else 1.0) for _ in range(trials)]
    ideal_s = sum(s.work_s + s.transition_s for s in stages)
    return RunSummary(trials=results, budget_usd=budget_usd, ideal_days=ideal_s / DAY_S,
                      ideal_cost=ideal_s / 3600 * nodes * gpus_per_node * price_per_gpu_hour,
                      interval_s=fm.interval_s(nodes), model=fm, nodes=nodes, stage_names=[s.name for s in stages])
