"""`flmplan tune` and `flmplan fit-loss`: the fits recover known constants within their reported
uncertainty, tiny proxies go from tune through fit-loss into a plan, and bad input is refused."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from flmplan.cli import app
from planner.growth.loss_fit import fit_chinchilla, fit_mu_scaling

TRUE = dict(E=1.2, A=40.0, B=60.0, alpha=0.35, beta=0.3)


def law(n, d, E, A, B, alpha, beta):
    return E + A / n**alpha + B / d**beta


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chinchilla_fit_recovers_known_constants_within_its_uncertainty(seed):
    """Synthetic curves of six sizes (0.1M–10M parameters, 10K–1M tokens) from a known law, with
    Gaussian noise of 0.005 nats: every fitted constant within 3 standard errors of the truth."""
    rng = np.random.default_rng(seed)
    n = np.repeat(np.geomspace(1e5, 1e7, 6), 30)
    d = np.tile(np.geomspace(1e4, 1e6, 30), 6)
    loss = law(n, d, **TRUE) + rng.normal(0, 0.005, n.size)
    fit = fit_chinchilla(n, d, loss)
    for k, true in TRUE.items():
        err = fit["errors"][k]
        assert np.isfinite(err) and err > 0, k
        assert abs(fit[k] - true) < 3 * err, (k, fit[k], true, err)
    assert fit["rms_residual"] == pytest.approx(0.005, rel=0.2)


def test_mu_scaling_fit_recovers_known_constants_within_its_uncertainty():
    rng = np.random.default_rng(3)
    n = np.geomspace(2e4, 5e6, 8)
    a, b, c = 0.9, -0.25, 1.4
    loss = a * (n / 1e6) ** b + c + rng.normal(0, 0.004, n.size)
    fit = fit_mu_scaling(n, loss)
    for k, true in (("a", a), ("b", b), ("c", c)):
        assert abs(fit[k] - true) < 3 * fit[f"{k}_err"], (k, fit[k], true, fit[f"{k}_err"])


def cli(*args: str):
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.output


@pytest.fixture(scope="module")
def proxies(tmp_path_factory):
    """Four tiny µP proxies (widths 16–64) trained for real by `flmplan tune`."""
    out = tmp_path_factory.mktemp("tune")
    code, text = cli("tune", "--widths", "16,32,48,64", "--lrs", "0.01", "--parametrization", "mup",
                     "--steps", "8", "--seq", "16", "--batch", "4", "--out", str(out))
    assert code == 0, text
    return out


def test_tune_then_fit_loss_then_a_plan_that_names_the_fitted_law(proxies, tmp_path):
    result = json.loads((proxies / "tune.json").read_text())
    assert sorted(result["best"]["mup"]) == ["16", "32", "48", "64"] and (proxies / "tune.html").exists()
    runs = sorted(str(p) for p in (proxies / "runs").iterdir())
    for r in runs:
        rows = [json.loads(x) for x in (tmp_path.parent / r / "metrics.jsonl").read_text().splitlines()]
        assert [x["step"] for x in rows if "step" in x] == list(range(8))
    law_path = tmp_path / "law.json"
    code, text = cli("fit-loss", *runs, "--out", str(law_path))
    assert code == 0, text
    law = json.loads(law_path.read_text())
    assert law["kind"] == "fitted" and law["runs"] == runs and (tmp_path / "law.html").exists()
    held = [p for p in law["mu_scaling"]["predictions"] if p["held_out"]]
    assert [p["width"] for p in held] == [64] and law["mu_scaling"]["measure"] == "held-out loss at the end"
    plan_path = tmp_path / "plan.json"
    code, text = cli("simulate", "--budget", "100000", "--loss-law", str(law_path), "--trials", "20",
                     "--out", str(plan_path))
    assert code == 0, text
    plan = json.loads(plan_path.read_text())
    recorded = plan["assumptions"]["loss_model"]["law"]
    assert recorded["kind"] == "fitted" and recorded["runs"] == runs and recorded["E"] == law["E"]
    # The errors are the runs' bootstrap, and the law is extrapolated from 64-wide proxies to billions of
    # parameters: the plan names that, with the interval of its final loss the errors imply.
    assert law["error_method"].startswith("bootstrap over runs") and law["params_range"][1] < 1e6
    (flag,) = [a for a in plan["advice"] if a["kind"] == "loss_law_uncertain"]
    f = flag["figures"]
    assert f["extrapolation"] > 1e4 and f["loss_low"] <= plan["totals"]["predicted_loss"] <= f["loss_high"]


def test_a_law_out_of_range_or_undetermined_is_refused_and_a_loose_one_is_flagged(tmp_path):
    """Constants outside a loss law's range, or standard errors that are not numbers, are refused in one
    sentence; errors as large as the constants are flagged in the plan, and the interval they imply
    widens with them."""
    base = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
    cases = [({**base, "alpha": -0.02}, "alpha = -0.02, outside its range"),
             ({**base, "beta": 7.0}, "beta = 7, outside its range"),
             ({**base, "errors": {**dict.fromkeys(base, 0.01), "alpha": float("nan")}},
              "undetermined standard errors")]
    for k, (raw, words) in enumerate(cases):
        path = tmp_path / f"bad{k}.json"
        path.write_text(json.dumps(raw))
        code, output = cli("simulate", "--loss-law", str(path), "--trials", "20")
        assert code == 2 and words in output and len(output.strip().splitlines()) == 1, output
    widths = []
    for scale in (0.5, 1.0):
        path = tmp_path / f"loose{scale}.json"
        errors = {k: scale * 2.2 * v for k, v in base.items()}          # ≥ the constants themselves
        path.write_text(json.dumps({**base, "errors": errors}))
        out = tmp_path / f"plan{scale}.json"
        code, output = cli("simulate", "--loss-law", str(path), "--trials", "20", "--out", str(out))
        assert code == 0, output
        (flag,) = [a for a in json.loads(out.read_text())["advice"] if a["kind"] == "loss_law_uncertain"]
        assert set(flag["figures"]["doubts"]) == set(base)
        widths.append(flag["figures"]["loss_high"] - flag["figures"]["loss_low"])
    assert widths[1] > widths[0] > 0


def test_a_second_tune_reuses_finished_proxies(proxies):
    before = {p: (p / "proxy.json").stat().st_mtime_ns for p in (proxies / "runs").iterdir()}
    code, text = cli("tune", "--widths", "16,32,48,64", "--lrs", "0.01", "--parametrization", "mup",
                     "--steps", "8", "--seq", "16", "--batch", "4", "--out", str(proxies))
    assert code == 0, text
    assert before == {p: (p / "proxy.json").stat().st_mtime_ns for p in (proxies / "runs").iterdir()}


def test_bad_input_to_tune_and_fit_loss_is_one_sentence_and_exit_2(proxies, tmp_path):
    text_file = tmp_path / "other.txt"
    text_file.write_text("an entirely different corpus of text. " * 600)
    other = tmp_path / "other"
    assert cli("tune", "--widths", "16,32", "--lrs", "0.01", "--parametrization", "mup", "--steps", "6",
               "--seq", "16", "--batch", "2", "--data", str(text_file), "--out", str(other))[0] == 0
    mine = sorted(str(p) for p in (proxies / "runs").iterdir())
    (tmp_path / "empty").mkdir()
    cases = [
        (("tune", "--widths", "32", "--out", str(tmp_path / "t")), "at least two different widths"),
        (("tune", "--widths", "32,abc", "--out", str(tmp_path / "t")), "'abc' is not one"),
        (("tune", "--widths", "32,40", "--out", str(tmp_path / "t")), "not a positive multiple of the head"),
        (("tune", "--lrs", "-1,0.1", "--out", str(tmp_path / "t")), "must be positive"),
        (("tune", "--out", str(text_file)), "is a file"),
        (("fit-loss",), "Missing argument"),
        (("fit-loss", str(tmp_path / "nowhere")), "is not a run folder"),
        (("fit-loss", str(tmp_path / "empty")), "has no metrics.jsonl"),
        (("fit-loss", mine[0], mine[0]), "all of one size"),
        (("fit-loss", *mine, str(other / "runs" / "mup-w16-lr0.01-om1")), "trained on different data"),
        (("fit-loss", *mine[:3]), "three sizes left after holding out 1"),
        (("fit-loss", *mine, "--out", str(tmp_path)), "is a folder"),
    ]
    for args, words in cases:
        code, output = cli(*args)
        assert code == 2 and words in output and "Traceback" not in output, (args, output)
        assert len(output.strip().splitlines()) == 1 or "Missing argument" in output, output
    assert not (tmp_path / "t").exists()


def test_a_run_of_flmplan_run_is_read_as_one_curve(tmp_path):
    """A one-stage run folder (plan.json beside metrics.jsonl, as the runtime writes them): the plan's
    parameters, tokens per step from its batch, the data from the start record, a resumed step's last
    record; a grown run is refused."""
    from pathlib import Path

    from planner.errors import FlmplanError
    from planner.plan.plan_file import load_plan
    from planner.plan.run_curves import read_curve

    plan_file = Path(__file__).parents[1] / "examples/plans/tiny_one_stage.json"
    run = tmp_path / "run"
    run.mkdir()
    (run / "plan.json").write_text(plan_file.read_text())
    rows = [{"event": "start", "data": "corpus A"}] + [{"stage": 1, "step": s, "loss": 5.0 - s} for s in range(4)]
    rows += [{"event": "start", "data": "corpus A"}, {"stage": 1, "step": 3, "loss": 1.5}]     # resumed at step 3
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    c = read_curve(run)
    st = load_plan(plan_file).stages[0]
    assert c.params == st.model.params() and c.data == "corpus A"
    assert c.tokens.tolist() == [(s + 1) * st.layout.global_batch * st.model.seq for s in range(4)]
    assert c.loss.tolist() == [5.0, 4.0, 3.0, 1.5]
    grown = tmp_path / "grown"
    grown.mkdir()
    (grown / "plan.json").write_text((Path(__file__).parents[1] / "examples/plans/tiny_two_stage.json").read_text())
    (grown / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text())
    with pytest.raises(FlmplanError, match="run of 2 stages"):
        read_curve(grown)
