"""The plan's advice: each case triggered by a constructed schedule, and absent when it does not apply."""

import pytest

from planner.cost.device_profile import builtin_profile
from planner.growth.loss_law import GrowthLossModel, load_law
from planner.growth.schedule import Schedule, Settings, StageRun
from planner.growth.schedule_search import Planner
from planner.model.specs import Layout, ModelSpec, get_gpu
from planner.plan.advice import advise

SMALL = ModelSpec(layers=24, hidden=4096, heads=32, ffn=16384, vocab=100352, seq=2048)      # ≈5.3B
MID = ModelSpec(layers=48, hidden=4096, heads=32, ffn=16384, vocab=100352, seq=2048)        # ≈10B
HUGE = ModelSpec(layers=80, hidden=10240, heads=80, ffn=40960, vocab=100352, seq=2048)     # ≈101B
LAYOUT = Layout(tp=4, pp=4, dp=12, micro_batch=1, global_batch=2304, zero=1)


def planner(budget=100_000.0, max_days=60.0, max_gpus=192) -> Planner:
    settings = Settings(gpu=get_gpu("a800-80gb"), price_per_gpu_hour=1.0, max_gpus=max_gpus, target_params=101e9,
                        budget_usd=budget, max_days=max_days)
    return Planner(settings, builtin_profile("a800-80gb"), GrowthLossModel(law=load_law("chinchilla")))


def stage(model: ModelSpec, tokens: float, loss: float, step_s: float = 10.0) -> StageRun:
    return StageRun(model=model, layout=LAYOUT, step_s=step_s, tflops_hfu=150, tflops_mfu=140, mfu=0.45,
                    memory_gib=60, tokens=tokens, loss_end=loss)


def schedule(p: Planner, stages: list[StageRun], name: str = "2-stage growth") -> Schedule:
    return Schedule(name=name, stages=stages, gpus=192, settings=p.s, loss=stages[-1].loss_end)


def kinds(advice) -> list[str]:
    return [a.kind for a in advice]


def test_a_fixed_size_model_that_beats_the_plan_is_named():
    p = planner()
    plan = schedule(p, [stage(SMALL, 100e9, 2.3), stage(HUGE, 50e9, 2.1)])
    better = schedule(p, [stage(MID, 200e9, 2.05)], name="compute-optimal fixed size")
    worse = schedule(p, [stage(MID, 200e9, 2.2)], name="compute-optimal fixed size")
    (item,) = [a for a in advise(plan, [better], p) if a.kind == "fixed_size_better"]
    assert "2.050 against this plan's 2.100" in item.message
    assert "fixed_size_better" not in kinds(advise(plan, [worse], p))


def test_a_growth_that_raises_the_loss_is_named_with_its_cost():
    p = planner()
    raising = schedule(p, [stage(SMALL, 100e9, 2.04), stage(HUGE, 50e9, 2.05)])
    (item,) = [a for a in advise(raising, [], p) if a.kind == "growth_raises_loss"]
    assert item.figures["loss_before"] == 2.04 and item.figures["loss_after"] == 2.05
    # 50e9 tokens / (2304 × 2048) = 10,597 steps × 10 s = 1.227 days × 24 h × 192 GPUs × $1.
    assert item.figures["stage_cost_usd"] == pytest.approx(10597 * 10 / 86400 * 24 * 192, rel=1e-3)
    lowering = schedule(p, [stage(SMALL, 100e9, 2.2), stage(HUGE, 50e9, 2.1)])
    assert "growth_raises_loss" not in kinds(advise(lowering, [], p))


def test_a_stage_at_its_floor_is_named():
    p = planner()
    step = LAYOUT.global_batch * 2048
    floor = (p.s.grow_steps + p.s.min_steps_after_growth) * step
    at_floor = schedule(p, [stage(SMALL, 100e9, 2.3), stage(HUGE, floor, 2.1)])
    (item,) = [a for a in advise(at_floor, [], p) if a.kind == "stage_at_floor"]
    assert item.figures["stage"] == 2 and "83% of it under the mask" in item.message   # 5000 / 6000
    above = schedule(p, [stage(SMALL, 100e9, 2.3), stage(HUGE, 3 * floor, 2.1)])
    assert "stage_at_floor" not in kinds(advise(above, [], p))


def test_no_growth_and_a_growth_past_the_literature_are_named():
    p = planner()
    alone = schedule(p, [stage(HUGE, 10.7e9, 2.5)], name="1-stage growth")
    assert "no_growth" in kinds(advise(alone, [], p))
    big_jump = schedule(p, [stage(SMALL, 100e9, 2.3), stage(HUGE, 80e9, 2.1)])   # ≈ ×19
    advice = advise(big_jump, [], p)
    assert "no_growth" not in kinds(advice)
    (item,) = [a for a in advice if a.kind == "growth_factor"]
    assert item.figures["max_factor"] == pytest.approx(HUGE.params() / SMALL.params())
    modest = schedule(p, [stage(MID, 100e9, 2.3), stage(ModelSpec(layers=96, hidden=4096, heads=32, ffn=16384,
                                                                    vocab=100352, seq=2048), 80e9, 2.1)])
    assert "growth_factor" not in kinds(advise(modest, [], p))


def test_the_binding_constraint_and_the_unspent_budget():
    p = planner(budget=100_000.0, max_days=60.0)
    per_day = 24 * 192 * 1.0
    # Spends the whole budget: money binds.
    money = schedule(p, [stage(HUGE, 1.0, 2.1)])
    money.stages[0].tokens = 100_000 / per_day * 86400 / 10 * (2304 * 2048)
    (item,) = [a for a in advise(money, [], p) if a.kind == "binding"]
    assert item.figures["binds"] == ["money"]
    # Runs to the deadline on the largest cluster with $724K of $1M left: deadline and GPUs bind.
    rich = planner(budget=1_000_000.0, max_days=60.0)
    slow = schedule(rich, [stage(HUGE, 1.0, 2.1)])
    slow.stages[0].tokens = 60 * 86400 / 10 * (2304 * 2048)
    (item,) = [a for a in advise(slow, [], rich) if a.kind == "binding"]
    assert item.figures["binds"] == ["deadline", "GPUs"]
    assert item.figures["unspent_usd"] == pytest.approx(1_000_000 - 60 * per_day, rel=1e-3)
    assert "left unspent" in item.message


def test_a_confidence_that_cannot_be_met_says_so(monkeypatch):
    import planner.plan.budget as simulate

    monkeypatch.setattr(simulate, "MAX_REPLANS", 0)
    p = planner(budget=100_000.0)
    from planner.sim.whole_run import FailureModel

    result = simulate.plan_budget(p.s, p.profile, p.loss_model, failures=FailureModel(failures_per_1000_node_days=20),
                                  trials=100)
    sim = result.plan.simulation
    assert sim["confidence"] == 0.9 and sim["confidence_met"] is False and sim["replans"] == 0
    first = result.plan.advice[0]
    assert first["kind"] == "confidence_not_met" and f"{sim['p_within_budget']:.0%}" in first["message"]
