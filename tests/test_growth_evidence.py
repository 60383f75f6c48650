"""Published growth results held against the growth loss model: equal-loss continuation cannot give the
speed-ups depth stacking measured, with any knobs in range; a persistent token efficiency fitted on one
case predicts the others."""

import dataclasses

import pytest

from planner.growth.evidence import evidence_table, growth_cases, load_token_efficiency, predicted_speedup
from planner.growth.loss_law import GrowthLossModel

# Du et al. 2024 report 48.6 % and 54.5 % for the same 3B model at two lengths: a constant η cannot
# follow a 5.9-point spread that the source itself shows, so out-of-sample errors are held to it.
STATED_SPREAD = 0.545 - 0.486


def test_every_case_names_its_source_and_convention():
    cases = growth_cases()
    assert {"gstack-7b-300b", "gstack-3b-180b", "gstack-3b-240b", "msg-gpt2", "flm101b"} <= {c.name for c in cases}
    for c in cases:
        assert c.citation and c.convention and c.stated_speedup > 0
        assert c.modelled or c.why_not


def test_equal_loss_continuation_cannot_reproduce_stacking_and_the_token_efficiency_can():
    table = evidence_table()
    stacking = [r for r in table["rows"] if r["name"].startswith("gstack")]
    for r in stacking:
        # The most favourable knobs in range give a few percent where the source measured ~50 %.
        assert r["equal_loss_best"] < 0.1 * r["stated"], r
    fitted = next(r for r in stacking if r["in_fit"])
    assert fitted["token_efficiency"] == pytest.approx(fitted["stated"], abs=1e-6)
    for r in stacking:
        if not r["in_fit"]:
            assert abs(r["token_efficiency"] - r["stated"]) <= STATED_SPREAD + 1e-9, r
    assert 1.3 < table["eta"] < 1.8


def test_a_growth_continues_from_the_loss_it_reached():
    """Equal-loss continuation, the law's core (Shen et al. 2022): a model grown after D tokens starts at the
    loss the small model reached, not at a fresh model's, and a grown model that trains on is ahead of one
    that started its size fresh on the same tokens. Drop the continuation term (D_eq) and both fail."""
    import numpy as np

    model = GrowthLossModel()
    small, large, before = 3.5e9, 9.3e9, 200e9
    reached = model.stage_losses([small], [before], [0.0])[0]
    just_after = model.stage_losses([small, large], [before, 1.0], [0.0, 0.0])[-1]
    assert just_after == pytest.approx(reached, abs=1e-3)
    later = np.array([10e9, 100e9, 400e9])
    grown = model.stage_losses([small, large], [before, later], [0.0, 0.0])[-1]
    assert np.all(grown < model.law.loss(large, later)) and np.all(np.diff(grown) < 0)


def test_a_larger_token_efficiency_means_a_larger_speedup():
    case = next(c for c in growth_cases() if c.name == "gstack-7b-300b")
    base = GrowthLossModel()
    values = [predicted_speedup(case, dataclasses.replace(base, token_efficiency=eta)) for eta in (1.0, 1.2, 1.5)]
    assert values == sorted(values) and values[0] < 0.05


def test_the_plan_records_the_token_efficiency_and_the_choice_follows_it(tmp_path):
    """At η = 1 (assumed) the $150K plan's advice says a fixed-size model predicts a lower loss; at the η
    the published stacking results ask for, growth predicts the lower loss and the plan records η. (At
    $100K, once the plan holds its P90 with the cost model's own error drawn, it buys less, and even the
    published η leaves the fixed size ahead, 2.047 against 2.048.)"""
    import json

    from typer.testing import CliRunner

    from flmplan.cli import app

    eta = evidence_table()["eta"]
    plans = {}
    for value in ("1", "published"):
        out = tmp_path / f"plan-{value}.json"
        r = CliRunner().invoke(app, ["simulate", "--budget", "150000", "--trials", "20", "--token-efficiency",
                                     value, "--out", str(out)])
        assert r.exit_code == 0, r.output
        plans[value] = json.loads(out.read_text())
    kinds = {v: {a["kind"] for a in p["advice"]} for v, p in plans.items()}
    assert "fixed_size_better" in kinds["1"] and "fixed_size_better" not in kinds["published"]
    # The downside: the break-even η lies between the two; below it the fixed size is recommended first.
    down = {v: next(a for a in p["advice"] if a["kind"] == "downside") for v, p in plans.items()}
    even = down["1"]["figures"]["break_even_eta"]
    assert 1 < even < eta and down["published"]["figures"]["break_even_eta"] == pytest.approx(even, abs=0.05)
    assert plans["1"]["advice"][0]["kind"] == "downside" and down["1"]["message"].startswith("Recommended: the fixed")
    assert not down["published"]["figures"]["recommend_fixed"]
    low = down["1"]["figures"]["loss_at_low_eta"]
    assert low["0.8"] > low["0.9"] > plans["1"]["totals"]["predicted_loss"]
    lm = plans["published"]["assumptions"]["loss_model"]
    assert lm["token_efficiency"] == pytest.approx(eta) and lm["evidence"].startswith("published (Du et al. 2024")
    assert plans["published"]["totals"]["predicted_loss"] < plans["1"]["totals"]["predicted_loss"]


def _pairs_file(path, eta: float, error: float, pairs: int):
    """What `flmplan grow-vs-scratch` writes, reduced to what a plan reads of it."""
    import json

    path.write_text(json.dumps({"kind": "flmplan-growth-pairs", "fit": {"token_efficiency": eta, "error": error,
                                                                        "pairs": pairs}}))
    return path


def test_the_plan_names_its_evidence_and_its_interval_narrows_with_more_of_it(tmp_path):
    """Assumed, η spans equal-loss continuation to the published stacking value; measured, its standard
    error: the final loss's interval is widest when assumed and narrows as the measurement's error does."""
    import json

    from typer.testing import CliRunner

    from flmplan.cli import app

    widths, evidence = {}, {}
    for name, value in (("assumed", "1"), ("few", str(_pairs_file(tmp_path / "few.json", 1.3, 0.12, 4))),
                        ("many", str(_pairs_file(tmp_path / "many.json", 1.3, 0.03, 16)))):
        out = tmp_path / f"{name}.json"
        r = CliRunner().invoke(app, ["simulate", "--budget", "100000", "--trials", "20", "--token-efficiency", value,
                                     "--out", str(out)])
        assert r.exit_code == 0, r.output
        plan = json.loads(out.read_text())
        (item,) = [a for a in plan["advice"] if a["kind"] == "growth_evidence"]
        f = item["figures"]
        assert f["loss_low"] <= plan["totals"]["predicted_loss"] <= f["loss_high"] and 0 <= f["p_beats_fixed"] <= 1
        widths[name], evidence[name] = f["loss_high"] - f["loss_low"], f["evidence"]
    assert evidence["assumed"] == "assumed" and evidence["many"].startswith("measured on 16 proxy pairs")
    assert widths["assumed"] > widths["few"] > widths["many"] > 0
    # A measurement whose error is as large as its value cannot decide a plan.
    loose = _pairs_file(tmp_path / "loose.json", 1.1, 1.5, 2)
    r = CliRunner().invoke(app, ["simulate", "--trials", "20", "--token-efficiency", str(loose)])
    assert r.exit_code == 2 and "its error is as large as the value" in r.output


def test_grow_versus_scratch_measures_pairs_and_predicts_the_one_held_out(tmp_path):
    """MSG depth growths and the G_stack control of two seeds against the target from scratch, tiny and
    short: every pair has its speed-up or, never reaching the scratch loss, its bound (censored); the
    decayed runs' final gap has its paired standard error; η is fitted per operator with its seeds'
    scatter, the last MSG pair predicted; a plan refuses a control's η for MSG; bad input is one sentence."""
    import json

    import torch
    from typer.testing import CliRunner

    from flmplan.cli import app
    from planner.errors import FlmplanError

    out = tmp_path / "pairs"
    r = CliRunner().invoke(app, ["grow-vs-scratch", "--hidden", "64", "--layers", "2", "--steps", "30", "--points",
                                 "0.2,0.4", "--dims", "depth,stack", "--seeds", "0,1", "--batch", "8", "--seq", "32",
                                 "--grow-steps", "5", "--eval-sequences", "16", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads((out / "pairs.json").read_text())
    assert len(result["pairs"]) == 8 and (out / "seed0-scratch" / "curve.jsonl").is_file()
    for p in result["pairs"]:
        assert p["factor"] > 1.5 and p["equivalent"] and (p["speedup_flops"] is not None) == p["reached"]
        assert (p["speedup_bound"] is None) == p["reached"] and p["final_gap_se"] > 0
        assert p["operator"] == ("G_stack" if p["dim"] == "stack" else "MSG")
    phases = [json.loads(line)["phase"] for line in (out / "seed0-scratch" / "curve.jsonl").read_text().splitlines()]
    assert phases[0] == "stable" and phases[-1] == "cooldown"
    msg, stack = result["fits"]["MSG"], result["fits"]["G_stack"]
    assert result["fit"] == msg and msg["pairs"] == 3 and stack["pairs"] == 4
    assert msg["seeds"] == 2 and set(msg["per_seed"]) == {"0", "1"} and "scatter of η over 2 seeds" in msg["method"]
    held = result["held_out"]
    assert held["name"] == "seed1-depth-at12" and held["predicted"] is not None
    assert held["verdict"] in ("within", "outside", "censored, consistent", "censored, inconsistent")
    assert (held["bound"] is None) == (held["measured"] is not None)
    control = tmp_path / "control.json"
    control.write_text(json.dumps({"fit": {**stack, "operator": "G_stack"}}))
    with pytest.raises(FlmplanError, match="not for MSG"):
        load_token_efficiency(str(control))
    for args, words in ((["--points", "1.5"], "between 0 and 1"), (["--dims", "height"], "--dims takes depth"),
                        (["--layers", "3"], "an even number of layers"), (["--points", "0.5", "--dims", "depth",
                                                                           "--seeds", "0"], "at least three"),
                        (["--points", "0.9"], "before the cooldown"), (["--device", "tpu"], "--device takes"),
                        *([(["--device", "cuda"], "sees no GPU")] if not torch.cuda.is_available() else [])):
        r = CliRunner().invoke(app, ["grow-vs-scratch", "--steps", "20", "--out", str(tmp_path / "bad"), *args])
        assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output, (args, r.output)


def test_du_et_als_timing_guideline_reproduces_its_own_table_and_checks_the_plan():
    """The prts README's table (Llama families, g = 4): d for N and D = tokens, C = 6·N·D."""
    from planner.growth.evidence import gstack_growth_tokens
    from planner.plan.advice import growth_timing

    for n, d_tokens, d in ((8e9, 15e12, 6.58e9), (7e9, 2e12, 11.11e9), (13e9, 2e12, 15.84e9), (70e9, 2e12, 42.48e9)):
        assert gstack_growth_tokens(n, 6 * n * d_tokens) == pytest.approx(d, rel=0.005)
    from test_advice import HUGE, SMALL, planner, schedule, stage

    p = planner()
    plan = schedule(p, [stage(SMALL, 100e9, 2.3), stage(HUGE, 50e9, 2.1)])
    item = growth_timing(plan, p)
    guide = gstack_growth_tokens(HUGE.params(), plan.compute_flops)
    assert item.figures["guideline_tokens"] == pytest.approx(guide)
    assert item.figures["ratio"] == pytest.approx(100e9 / guide) and "Du et al. 2024" in item.message
    assert item.figures["timing"] == "search" and item.figures["other_timing_loss"] is not None


def test_the_growth_search_uses_the_timing_guideline_when_asked():
    """--growth-timing gstack fixes the first stage at the guideline for the compute the chain spends,
    splits the rest as before, and the loss model's free choice is never worse by its own measure."""
    from test_advice import HUGE, SMALL, planner

    from planner.growth.evidence import gstack_growth_tokens
    from planner.growth.schedule_search import Planner

    free_planner = planner()
    pinned_planner = Planner(dataclasses.replace(free_planner.s, growth_timing="gstack"), free_planner.profile,
                             free_planner.loss_model)
    free = free_planner.schedule_for([SMALL, HUGE], 192)
    pinned = pinned_planner.schedule_for([SMALL, HUGE], 192)
    assert free is not None and pinned is not None
    step = pinned.stages[0].layout.global_batch * SMALL.seq
    free_c = pinned_planner.schedule_for([SMALL, HUGE], 192, timing="search").compute_flops
    assert abs(pinned.stages[0].tokens - gstack_growth_tokens(HUGE.params(), free_c)) <= step
    assert abs(pinned.stages[0].tokens - free.stages[0].tokens) > 10 * step     # the timing moved
    assert free.loss <= pinned.loss + 1e-9 and pinned.cost_usd <= free_planner.s.budget_usd
    with pytest.raises(Exception, match="--growth-timing must be one of"):
        dataclasses.replace(free_planner.s, growth_timing="soon")


def test_a_measured_operator_below_break_even_recommends_the_fixed_size(tmp_path):
    """MSG measured at η = 0.85 ± 0.05 (below 1, as Du et al.'s G_random, their stand-in for masked growth,
    measured): the $100K plan's first advice recommends the fixed size, with the loss at the low end of the
    measurement (η − 2σ) beside the values below 1, and says its η is the plan's own operator's."""
    import json

    from typer.testing import CliRunner

    from flmplan.cli import app

    out = tmp_path / "plan.json"
    pairs = _pairs_file(tmp_path / "low.json", 0.85, 0.05, 12)
    r = CliRunner().invoke(app, ["simulate", "--budget", "100000", "--trials", "20", "--token-efficiency", str(pairs),
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    plan = json.loads(out.read_text())
    first = plan["advice"][0]
    assert first["kind"] == "downside" and first["message"].startswith("Recommended: the fixed")
    f = first["figures"]
    assert f["recommend_fixed"] and f["break_even_eta"] > 0.85
    assert set(f["loss_at_low_eta"]) == {"0.9", "0.8", "0.75"}
    assert f["loss_at_low_eta"]["0.75"] > f["loss_at_low_eta"]["0.8"] > f["fixed_loss"]
    assert "measured on MSG proxy pairs" in first["message"]
