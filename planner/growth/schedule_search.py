"""Growth-schedule search (`Planner`): stages, shapes, tokens, layouts and cluster size for a budget.

For every final shape of at least the target size, every chain of MSG-reachable stage shapes
(1–4 stages) and every cluster size (whole nodes up to --max-gpus), each stage gets its
fastest layout from the layout search, and the tokens are split between the stages to
minimise the predicted final loss with the failure-free cost within the budget and the run
within the deadline (a vectorised grid over the split for every chain, then an SLSQP polish of
the chosen one). The FLM-101B schedule, the target trained from
scratch and the compute-optimal fixed-size model are costed on the same hardware and price."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
from scipy.optimize import minimize

from planner.cost.device_profile import Profile
from planner.errors import Infeasible, InvalidLayout
from planner.growth.evidence import gstack_growth_tokens
from planner.growth.flm import FLM_SCHEDULE, flm_base
from planner.growth.loss_law import GrowthLossModel
from planner.growth.operators import final_shapes, growth_between, growth_chains, shape, smallest_shape
from planner.growth.schedule import SECONDS_PER_DAY, Schedule, Settings, StageRun
from planner.layout.candidates import PartialLayout
from planner.layout.search import search_layout
from planner.model.specs import ClusterSpec, ModelSpec


class Planner:
    """Holds the caches of one `simulate` call: a layout search per (shape, GPUs, batch)."""

    def __init__(self, settings: Settings, profile: Profile, loss_model: GrowthLossModel,
                 stage_cache: dict | None = None, progress: Callable[[float], None] | None = None) -> None:
        self.s = settings
        self.progress = progress or (lambda done: None)   # the search's share done, 0–1
        self.profile = profile
        self.loss_model = loss_model
        # Layout searches do not depend on money: a re-plan at another cost factor shares them.
        self._stage_cache: dict[tuple, StageRun | None] = {} if stage_cache is None else stage_cache
        self.evaluated: list[Schedule] = []
        self.best_without_raise: Schedule | None = None

    # --- stages ---------------------------------------------------------------
    def stage(self, model: ModelSpec, gpus: int, global_batch: int | None = None,
              part: PartialLayout | None = None, coarse: bool = False) -> StageRun | None:
        batch = global_batch or self.s.global_batch
        key = (model, gpus, batch, part, coarse)
        if key not in self._stage_cache:
            cluster = ClusterSpec(gpu=self.s.gpu, gpus=gpus, gpus_per_node=self.s.gpu.gpus_per_node)
            try:
                part = part or PartialLayout(global_batch=batch, attention=self.s.attention, coarse=coarse)
                result = search_layout(model, cluster, part, self.profile, self.s.software)
            except (Infeasible, InvalidLayout):   # no layout of this stage works here: not a candidate
                self._stage_cache[key] = None
            else:
                e = result.best
                self._stage_cache[key] = StageRun(
                    model=model, layout=e.layout, step_s=e.iteration_s, tflops_hfu=e.tflops_per_gpu_hfu,
                    tflops_mfu=e.tflops_per_gpu_mfu, mfu=e.mfu, memory_gib=e.memory_gib_per_gpu,
                    breakdown=e.to_dict()["breakdown_s"])
        cached = self._stage_cache[key]
        return None if cached is None else StageRun(**{**cached.__dict__, "teacher_every": self.s.teacher_every})

    def usd_per_token(self, st: StageRun, gpus: int) -> float:
        return st.seconds_per_token() * gpus * self.s.price_per_gpu_hour / 3600 * self.s.cost_factor

    def affordable_tokens(self, st: StageRun, gpus: int) -> float:
        """Language tokens one fixed-size stage can train for the budget before the deadline."""
        return min(self.s.budget_usd / self.usd_per_token(st, gpus), self.s.max_days * SECONDS_PER_DAY /
                   st.seconds_per_token())

    def floor_cost_usd(self, stages: list[StageRun], gpus: int) -> float:
        """What a chain costs at its minimum tokens, growth transitions included."""
        transitions = (len(stages) - 1) * self.s.transition_hours * gpus * self.s.price_per_gpu_hour
        return transitions + sum(self.usd_per_token(s, gpus) * self.min_tokens(k, s) for k, s in enumerate(stages))

    def min_tokens(self, k: int, st: StageRun) -> float:
        steps = self.s.min_first_stage_steps if k == 0 else self.s.grow_steps + self.s.min_steps_after_growth
        return steps * st.layout.global_batch * st.model.seq

    # --- one chain --------------------------------------------------------------
    def schedule_for(self, chain: list[ModelSpec], gpus: int, name: str = "growth",
                     coarse: bool = False, first_tokens: float | None = None,
                     timing: str | None = None) -> Schedule | None:
        """The chain's lowest-loss token split for the budget; `first_tokens` fixes the first stage's
        tokens (the growth's timing) instead of leaving it to the loss model. Under the `timing` gstack
        (default: the settings' --growth-timing), a growth chain's first stage is fixed at Du et al.
        2024's guideline for the compute it spends."""
        if first_tokens is None and (timing or self.s.growth_timing) == "gstack" and len(chain) > 1:
            free = self._schedule(chain, gpus, name, coarse, None)
            if free is None:
                return None
            first_tokens = gstack_growth_tokens(chain[-1].params(), free.compute_flops)
        return self._schedule(chain, gpus, name, coarse, first_tokens)

    def _schedule(self, chain: list[ModelSpec], gpus: int, name: str, coarse: bool,
                  first_tokens: float | None) -> Schedule | None:
        stages = [self.stage(m, gpus, coarse=coarse) for m in chain]
        if any(s is None for s in stages):
            return None
        price = np.array([self.usd_per_token(s, gpus) for s in stages])
        seconds = np.array([s.seconds_per_token() for s in stages])
        d_min = np.array([self.min_tokens(k, s) for k, s in enumerate(stages)])
        pinned = first_tokens is not None and len(chain) > 1
        if pinned:
            d_min[0] = max(d_min[0], first_tokens)
        transition_h = (len(chain) - 1) * self.s.transition_hours
        spare = (self.s.budget_usd - self.floor_cost_usd(stages, gpus)
                 - price[0] * (d_min[0] - self.min_tokens(0, stages[0])))
        spare_s = self.s.max_days * SECONDS_PER_DAY - transition_h * 3600 - float(seconds @ d_min)
        if spare < 0 or spare_s < 0:
            return None
        tokens = d_min + self._split(chain, stages, price, seconds, d_min, spare, spare_s, polish=not coarse,
                                     pinned=pinned)
        for st, d in zip(stages, tokens, strict=True):
            per_step = st.layout.global_batch * st.model.seq
            st.tokens = float(math.floor(d / per_step) * per_step)   # whole steps, never over budget
        return self._finish(name, stages, gpus)

    def _split(self, chain, stages, price, seconds, d_min, spare, spare_s, polish: bool,
               pinned: bool = False) -> np.ndarray:
        """Extra tokens per stage (beyond the minima) that minimise the final loss for `spare`
        dollars and `spare_s` seconds of the deadline; `polish` refines the grid optimum locally;
        `pinned` gives the first stage none (its tokens are fixed)."""
        k = len(chain)
        # Tokens if all the spare went to one stage: the budget or the deadline binds first.
        scale = np.minimum(spare / price, spare_s / seconds)
        if k == 1:
            return scale
        params = [m.params() for m in chain]
        ramps = self.ramps(stages)

        # Shares of the spare money on a simplex grid (all splits at once, vectorised), then a
        # local SLSQP polish from the best grid point; the deadline is a second linear constraint.
        money_tokens = spare / price
        grid = _simplex_grid(k, 12 if k <= 3 else 8)
        if pinned:
            grid = grid[grid[:, 0] == 0]
        # Where a split would run past the deadline, it is shortened to end on it.
        grid = grid * np.minimum(1.0, spare_s / np.maximum((grid * money_tokens) @ seconds, 1e-30))[:, None]
        extra = grid * money_tokens
        losses = np.asarray(self.loss_model.stage_losses(params, list((d_min + extra).T), ramps)[-1])
        start = grid[int(np.argmin(losses))]
        if not polish:
            return start * money_tokens

        def final_loss(shares: np.ndarray) -> float:
            d = d_min + np.clip(shares, 0, 1) * money_tokens
            return float(self.loss_model.stage_losses(params, list(d), ramps)[-1])

        bounds = [(0, 0 if pinned else 1)] + [(0, 1)] * (k - 1)
        res = minimize(final_loss, start, method="SLSQP", bounds=bounds,
                       constraints=[{"type": "ineq", "fun": lambda x: 1 - x.sum()},
                                    {"type": "ineq", "fun": lambda x: spare_s - float(seconds @ (x * money_tokens))}],
                       options={"ftol": 1e-10, "maxiter": 100})
        best = np.clip(res.x, 0, 1) if res.fun <= final_loss(start) else start
        if pinned:
            best[0] = 0.0
        return best * money_tokens

    def ramps(self, stages: list[StageRun]) -> list[float]:
        """Language tokens under each growth's mask ramp (grow_steps optimizer steps, teacher ones excluded)."""
        k = self.s.teacher_every
        share = 1 - 1 / k if k else 1.0
        return [0.0] + [self.s.grow_steps * share * s.layout.global_batch * s.model.seq for s in stages[1:]]

    def _finish(self, name: str, stages: list[StageRun], gpus: int) -> Schedule:
        params = [s.model.params() for s in stages]
        losses = self.loss_model.stage_losses(params, [s.tokens for s in stages], self.ramps(stages))
        for st, loss in zip(stages, losses, strict=True):
            st.loss_end = float(loss)
        return Schedule(name=name, stages=stages, gpus=gpus, settings=self.s, loss=float(losses[-1]),
                        ramp_tokens=self.ramps(stages))

    # --- the search -------------------------------------------------------------
    def cluster_sizes(self) -> list[int]:
        gpn = self.s.gpu.gpus_per_node
        top = self.s.max_gpus if self.s.max_gpus < gpn else self.s.max_gpus // gpn * gpn
        sizes = {top}
        for f in (2, 4):
            g = top // f // gpn * gpn
            if g >= gpn:
                sizes.add(g)
        return sorted(sizes, reverse=True)

    def search(self, base: ModelSpec) -> tuple[Schedule, Schedule]:
        """(lowest predicted loss, most tokens) among the growth schedules that fit the budget."""
        finals = final_shapes(base, self.s.target_params)
        sizes = self.cluster_sizes()
        fits_anywhere = False
        pairs = len(finals) * len(sizes)
        for i, final in enumerate(finals):
            for j, gpus in enumerate(sizes):
                self.progress((i * len(sizes) + j) / pairs)
                if self.stage(final, gpus, coarse=True) is None:
                    continue
                fits_anywhere = True
                for chain in growth_chains(final, self.s.max_stages):
                    if any(b.params() > self.s.max_growth_factor * a.params() for a, b in itertools.pairwise(chain)):
                        continue
                    sched = self.schedule_for(chain, gpus, name=f"{len(chain)}-stage growth", coarse=True)
                    if sched is not None:
                        self.evaluated.append(sched)
        if not fits_anywhere:
            raise Infeasible(
                f"No model of {self.s.target_params / 1e9:.0f}B parameters fits on {self.s.max_gpus} × "
                f"{self.s.gpu.key}; raise --max-gpus, pick a GPU with more memory, or lower --target-size."
            )
        if not self.evaluated:
            raise Infeasible(
                f"A budget of ${self.s.budget_usd:,.0f} buys no plan that reaches "
                f"{self.s.target_params / 1e9:.0f}B on {self.s.gpu.key} at ${self.s.price_per_gpu_hour:g}/GPU-hour; "
                f"the smallest that would work is about ${self.smallest_budget(finals, sizes):,.0f}."
            )
        best = min(self.evaluated, key=lambda s: (s.loss, s.days))
        most = max(self.evaluated, key=lambda s: (s.tokens, -s.loss))
        # A growth that ends above the stage before it makes the model worse for its money. The
        # plan with the lowest final loss is still chosen (the target size is the user's), with
        # the best plan free of such a growth beside it, and the advice says which growth it is.
        clean = [s for s in self.evaluated if not raises_loss(s)]
        self.best_without_raise = None
        if raises_loss(best) and clean:
            self.best_without_raise = self.refine(min(clean, key=lambda s: (s.loss, s.days)))
            self.best_without_raise.name = "lowest loss without a growth that raises it"
        return self.refine(best), self.refine(most)

    def refine(self, sched: Schedule) -> Schedule:
        """The same chain with every stage's layout from the full search, tokens split again."""
        fine = self.schedule_for([st.model for st in sched.stages], sched.gpus, sched.name)
        return fine if fine is not None and fine.loss <= sched.loss else sched

    def smallest_budget(self, finals: list[ModelSpec], sizes: list[int]) -> float:
        """The cost of the cheapest schedule at its minimum tokens."""
        cheapest = math.inf
        for final in finals:
            for gpus in sizes:
                for chain in growth_chains(final, self.s.max_stages):
                    stages = [self.stage(m, gpus, coarse=True) for m in chain]
                    if any(s is None for s in stages):
                        continue
                    cheapest = min(cheapest, self.floor_cost_usd(stages, gpus))
        return cheapest

    # --- baselines --------------------------------------------------------------
    def fixed(self, name: str, chain: list[ModelSpec], tokens: list[float], gpus: int,
              parts: list[PartialLayout | None] | None = None, batches: list[int] | None = None) -> Schedule | None:
        parts = parts or [None] * len(chain)
        batches = batches or [self.s.global_batch] * len(chain)
        stages = [self.stage(m, gpus, b, p) for m, b, p in zip(chain, batches, parts, strict=True)]
        if any(s is None for s in stages):
            return None
        for st, d in zip(stages, tokens, strict=True):
            per_step = st.layout.global_batch * st.model.seq
            st.tokens = float(math.floor(d / per_step) * per_step) or float(per_step)
        return self._finish(name, stages, gpus)

    def scratch_for_money(self, final: ModelSpec, gpus: int) -> Schedule | None:
        st = self.stage(final, gpus)
        if st is None:
            return None
        return self.fixed("target from scratch, same money", [final],
                          [self.affordable_tokens(st, gpus)], gpus)

    def compute_optimal(self, base: ModelSpec, gpus: int) -> Schedule | None:
        """The fixed-size model of the family with the lowest predicted loss for the budget: sizes
        compared on the coarse layout search, the best one costed on the full one."""
        best, best_loss = None, math.inf
        for target in (1e9, 2e9, 4e9, 8e9, 12e9, 16e9, 24e9, 32e9, 48e9, 64e9, 101e9, 128e9, 256e9):
            m = smallest_shape(base, target)
            st = self.stage(m, gpus, coarse=True)
            if st is None:
                continue
            tokens = self.affordable_tokens(st, gpus)
            loss = self.loss_model.stage_losses([m.params()], [tokens], [0.0])[-1]
            if loss < best_loss:
                best, best_loss = m, loss
        if best is None:
            return None
        st = self.stage(best, gpus)
        if st is None:
            return None
        return self.fixed("compute-optimal fixed size", [best], [self.affordable_tokens(st, gpus)], gpus)


def _simplex_grid(k: int, n: int) -> np.ndarray:
    """All share vectors of k non-negative multiples of 1/n summing to 1."""
    if k == 1:
        return np.ones((1, 1))
    rows = [(i, *rest) for i in range(n + 1) for rest in _compositions(k - 1, n - i)]
    return np.array(rows, dtype=float) / n


def _compositions(k: int, n: int) -> list[tuple[int, ...]]:
    if k == 1:
        return [(n,)]
    return [(i, *rest) for i in range(n + 1) for rest in _compositions(k - 1, n - i)]


def flm_schedule(planner: Planner) -> Schedule | None:
    base = flm_base()
    chain = [shape(base, layers, hidden) for layers, hidden in FLM_SCHEDULE["shapes"]]
    for a, b in itertools.pairwise(chain):
        growth_between(a, b, 0)
    gpus = FLM_SCHEDULE["gpus"] if planner.s.max_gpus >= FLM_SCHEDULE["gpus"] else planner.cluster_sizes()[0]
    same_layout = gpus == FLM_SCHEDULE["gpus"]
    parts = [PartialLayout(global_batch=b, tp=tp, pp=pp, sequence_parallel=True, zero=1,
                           attention=planner.s.attention)
             if same_layout else None
             for (tp, pp), b in zip(FLM_SCHEDULE["tp_pp"], FLM_SCHEDULE["global_batch"], strict=True)]
    schedule = planner.fixed("FLM-101B schedule", chain, FLM_SCHEDULE["tokens"], gpus, parts,
                             FLM_SCHEDULE["global_batch"])
    if schedule is not None:
        for st, lr in zip(schedule.stages, FLM_SCHEDULE["lr"], strict=True):
            st.lr = lr
    return schedule


def growth_factors(s: Schedule) -> list[float]:
    return [b.model.params() / a.model.params() for a, b in itertools.pairwise(s.stages)]


def raises_loss(s: Schedule) -> bool:
    """Whether some growth ends its stage above the stage before it ended."""
    return any(b.loss_end > a.loss_end for a, b in itertools.pairwise(s.stages))
