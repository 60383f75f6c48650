"""The simpy simulators: the pipeline step against the analytic model, and the run with failures."""

import random

import pytest

from planner.cost.device_profile import builtin_profile
from planner.layout.case import published_cases
from planner.layout.search import estimate_case
from planner.sim.pipeline import schedule_order, simulate_estimate
from planner.sim.whole_run import (
    DAY_S,
    FailureModel,
    StageWork,
    analytic_ettr,
    daly_interval,
    monte_carlo,
    young_interval,
)


def test_simulated_step_equals_the_analytic_step_for_every_pipeline_case():
    """Within 2 % on the benchmark rows. On three production rows (FLM-101B's 51B and 101B stages,
    LLaMA-65B) the simulated step is 2.2-2.6 % shorter than the analytic one: the analytic model is the
    slower of the two there, a gap not yet explained (docs/decisions.md); they are held to 3 %."""
    checked = 0
    for case in published_cases():
        est = estimate_case(case).best
        if est.layout.pp == 1:
            continue
        sim = simulate_estimate(est, builtin_profile(case.cluster.gpu), record=False)
        within = 0.02 if case.kind == "benchmark" else 0.03
        assert sim.step_s == pytest.approx(est.iteration_s, rel=within), case.name
        checked += 1
    assert checked >= 8


def test_schedule_orders_hold_every_pass_once():
    for p, v, m in ((4, 1, 8), (4, 2, 8), (2, 4, 4), (1, 1, 3)):
        for stage in range(p):
            order = schedule_order(stage, p, v, m)
            assert sorted(order) == sorted({(k, c, b) for k in ("forward", "backward")
                                            for c in range(v) for b in range(m)})
    # 1F1B: the last stage alternates from the start; the first warms up with p − 1 forwards.
    assert [k for k, _, _ in schedule_order(3, 4, 1, 8)[:4]] == ["forward", "backward", "forward", "backward"]
    assert [k for k, _, _ in schedule_order(0, 4, 1, 8)[:4]] == ["forward"] * 4


def test_gantt_timeline_has_every_pass():
    case = next(c for c in published_cases() if c.name == "flm101b-stage-101B")
    est = estimate_case(case).best
    sim = simulate_estimate(est, builtin_profile("a800-80gb"))
    passes = [r for r in sim.timeline if r["kind"] in ("forward", "backward")]
    assert len(passes) == 2 * est.layout.micro_batches * est.layout.interleave * est.layout.pp
    assert 0.9 < sim.busy_fraction(0) < 1.0


def test_young_and_daly_worked_examples():
    # δ = 5 min, M = 24 h: Young √(2·300·86400) = 7200 s exactly.
    assert young_interval(300, 86400) == pytest.approx(7200.0)
    # Daly: x = δ/2M = 300/172800, √x = 0.041667; 7200·(1 + 0.013889 + 0.000193) − 300 = 7001.39 s.
    x = 300 / 172800
    assert daly_interval(300, 86400) == pytest.approx(7200 * (1 + x**0.5 / 3 + x / 9) - 300)
    assert daly_interval(300, 86400) == pytest.approx(7001.39, abs=0.01)
    # δ ≥ 2M: checkpoint every M.
    assert daly_interval(1000, 400) == 400


STAGES = [StageWork("a", 5 * DAY_S, 1800), StageWork("b", 3 * DAY_S, 0)]


def test_zero_failure_rate_is_the_deterministic_run():
    fm = FailureModel(failures_per_1000_node_days=0)
    s = monte_carlo(STAGES, nodes=24, gpus_per_node=8, price_per_gpu_hour=1.0, fm=fm, trials=5, seed=1,
                    budget_usd=1e9)
    for t in s.trials:
        assert t.wall_s == 8 * DAY_S + 1800 and t.failures == 0
    assert s.to_dict()["days_p50"] == s.ideal_days


def test_more_failures_never_shorten_the_run():
    means = []
    for rate in (0.0, 2.0, 5.0, 20.0, 80.0):
        s = monte_carlo(STAGES, 24, 8, 1.0, FailureModel(failures_per_1000_node_days=rate), 300, 7, 1e9)
        means.append(sum(t.wall_s for t in s.trials) / len(s.trials))
        assert min(t.wall_s for t in s.trials) >= 8 * DAY_S + 1800
    assert means == sorted(means)


def test_llama3_scale_ettr_matches_the_analytic_estimate():
    # 16,384 GPUs = 2,048 nodes; 4.7e-4 failures per GPU-day = 3.76 per 1000 node-days;
    # 5 min checkpoint, 10 min restart, spares never run out.
    fm = FailureModel(failures_per_1000_node_days=3.76, checkpoint_min=5, restart_min=10, spare_fraction=1.0)
    nodes = 2048
    s = monte_carlo([StageWork("405B", 54 * DAY_S)], nodes, 8, 1.0, fm, trials=60, seed=3, budget_usd=1e12)
    simulated = s.to_dict()["ettr_mean"]
    expected = analytic_ettr(300, 600, fm.interval_s(nodes), fm.mtbf_s(nodes))
    assert simulated == pytest.approx(expected, rel=0.03)


def test_spot_preemption_with_notice_loses_no_work():
    noticed = FailureModel(failures_per_1000_node_days=0, spot_preemptions_per_day=2, spot_notice_min=10,
                           checkpoint_interval_min=600)
    blind = FailureModel(failures_per_1000_node_days=0, spot_preemptions_per_day=2, spot_notice_min=0,
                         checkpoint_interval_min=600)
    a = monte_carlo(STAGES, 24, 8, 1.0, noticed, 100, 5, 1e9).trials
    b = monte_carlo(STAGES, 24, 8, 1.0, blind, 100, 5, 1e9).trials
    assert sum(t.wall_s for t in a) < sum(t.wall_s for t in b)


def test_monte_carlo_is_seeded():
    fm = FailureModel()
    a = monte_carlo(STAGES, 24, 8, 1.0, fm, 50, 11, 1e9).to_dict()
    b = monte_carlo(STAGES, 24, 8, 1.0, fm, 50, 11, 1e9).to_dict()
    assert a == b
    # ...and the seed is used: another one draws other failures.
    assert monte_carlo(STAGES, 24, 8, 1.0, fm, 50, 12, 1e9).to_dict() != a


def test_the_model_error_weights_each_run_once_and_stretches_the_training():
    """A run with three rows counts as much as a run with one; a trial's factor stretches its training
    (not its transitions), and the failures drawn stay those of the same seed without the error."""
    from planner.cost.model_error import ModelError

    error = ModelError("test", (("a", "a1", 2.0), ("a", "a2", 2.0), ("a", "a3", 2.0), ("b", "b1", 1.0)))
    assert error.mean() == 1.5
    rng = random.Random(0)
    draws = [error.draw(rng) for _ in range(4000)]
    assert abs(draws.count(2.0) / len(draws) - 0.5) < 0.03
    none = FailureModel(failures_per_1000_node_days=0)
    stages = [StageWork("a", 10 * DAY_S, transition_s=3600), StageWork("b", 5 * DAY_S)]
    s = monte_carlo(stages, 24, 8, 1.0, none, 50, 3, 1e9, error)
    for t in s.trials:
        assert t.step_factor in (1.0, 2.0)
        assert t.wall_s == pytest.approx(15 * DAY_S * t.step_factor + 3600)
