"""`flmplan simulate` and `flmplan export`: the plan contract, the FLM-101B reproduction, the
budget constraint, and one clear sentence with exit 2 for bad input."""

import argparse
import itertools
import json
import shlex
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from planner.cli import app
from planner.plan import load_plan

runner = CliRunner()
PAPER_DAYS = [9.63, 5.37, 6.54]


@pytest.fixture(scope="module")
def flm_plan(tmp_path_factory):
    out = tmp_path_factory.mktemp("flm") / "plan.json"
    args = ["simulate", "--budget", "100000", "--schedule", "flm", "--out", str(out), "--trials", "300"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    return load_plan(out)


@pytest.fixture(scope="module")
def auto_plan(tmp_path_factory):
    out = tmp_path_factory.mktemp("auto") / "plan.json"
    r = runner.invoke(app, ["simulate", "--budget", "100000", "--out", str(out), "--trials", "200"])
    assert r.exit_code == 0, r.output
    return load_plan(out)


def test_flm_schedule_brackets_the_paper(flm_plan):
    """FLM-101B's schedule with the software facts its sources state is optimistic, as the cost
    model is on FLM's stages (BENCHMARKS.md §1); the range flmplan prints — open facts at their
    costliest, then the model's remaining miss on FLM's published throughputs taken out — reaches
    the paper's days and dollars: the paper must lie inside it, not at its optimistic end."""
    sim = flm_plan.simulation
    opened = flm_plan.assumptions["open_software_facts"]
    (low, costliest, calibrated), (cost_low, _, cost_high) = opened["days"], opened["cost_usd"]
    assert opened["facts_at_costliest"] == {"flash_attention": 1, "dropout": 0.1}
    assert low < costliest < calibrated
    assert sim["days_p50"] < 21.54
    # The calibrated end with failures (the simulation's P50 over failure-free) is within 10 % of the
    # paper's 21.54 days, and its cost within 10 % of about $100K at $1/GPU-hour.
    failures = sim["days_p50"] / low
    assert calibrated * failures == pytest.approx(21.54, rel=0.10)
    assert cost_high * sim["cost_p50"] / cost_low == pytest.approx(100_000, rel=0.10)
    # Stage by stage: 16B and 101B within 10 %; the 51B stage is the paper's own outlier (its
    # 160 TFLOP/s and 5.37 days disagree by 12 %): within 20 %.
    stages = [d * failures for d in opened["stage_days"][2]]
    assert stages[0] == pytest.approx(PAPER_DAYS[0], rel=0.10)
    assert stages[1] == pytest.approx(PAPER_DAYS[1], rel=0.20)
    assert stages[2] == pytest.approx(PAPER_DAYS[2], rel=0.10)
    scratch = next(b for b in flm_plan.baselines if b.name == "target from scratch, same tokens")
    assert scratch.tokens == pytest.approx(311.55e9, rel=0.01)
    # Failure-free, FLM's stated software; the paper's ≈ 76.7 days extrapolate its own wall-clock
    # stage: reached with the 101B stage's costliest facts and remaining miss.
    miss_101b = opened["stage_days"][2][2] / opened["stage_days"][0][2]
    assert scratch.days * miss_101b == pytest.approx(76.7, rel=0.10)


def test_auto_plan_reaches_the_target_within_budget_and_beats_flm(auto_plan, flm_plan):
    assert auto_plan.stages[-1].model.params() >= 101e9
    assert auto_plan.totals.cost_usd <= 100_000
    assert sum(s.predicted.cost_usd for s in auto_plan.stages) <= 100_000
    flm = next(b for b in auto_plan.baselines if b.name == "FLM-101B schedule")
    assert auto_plan.totals.predicted_loss <= flm.predicted_loss
    assert {b.name for b in auto_plan.baselines} >= {"target from scratch, same money", "compute-optimal fixed size"}
    for k, st in enumerate(auto_plan.stages):
        assert (st.growth is None) == (k == 0)
        assert st.layout.tp * st.layout.pp * st.layout.dp == auto_plan.cluster.gpus
        # A grown stage trains through its mask ramp and some steps after it.
        if st.growth:
            assert st.steps >= st.growth.grow_steps + 1000
    # No growth past ×4 (the literature's range), and none that ends above the stage before it.
    params = [st.model.params() for st in auto_plan.stages]
    assert all(b <= 4 * a for a, b in itertools.pairwise(params))
    losses = [st.predicted.loss_end for st in auto_plan.stages]
    assert all(b <= a for a, b in itertools.pairwise(losses))


def test_default_plan_fits_its_budget_with_failures_counted(auto_plan):
    """By default the budget holds at P90 of the simulated cost, failures counted, and the plan
    says what binds and what a fixed-size model would do instead."""
    sim = auto_plan.simulation
    assert sim["confidence"] == 0.9 and sim["confidence_met"] is True
    assert sim["cost_at_confidence"] <= 100_000 and sim["p_within_budget"] >= 0.9
    kinds = [a["kind"] for a in auto_plan.advice]
    assert kinds[-1] == "binding" and auto_plan.advice[-1]["figures"]["binds"] == ["money"]
    fixed = next(b for b in auto_plan.baselines if b.name == "compute-optimal fixed size")
    assert ("fixed_size_better" in kinds) == (fixed.predicted_loss < auto_plan.totals.predicted_loss)


@pytest.mark.parametrize("budget", [30_000, 250_000])
def test_budget_constraint_holds(budget):
    r = runner.invoke(app, ["simulate", "--budget", str(budget), "--json", "--trials", "50"])
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)
    assert plan["totals"]["cost_usd"] <= budget
    for key in ("step_s", "tflops_per_gpu_hfu", "mfu", "days", "cost_usd", "memory_gib_per_gpu"):
        assert key in plan["stages"][0]["predicted"]
    assert {"gpu", "gpus", "price_per_gpu_hour"} <= set(plan["cluster"])
    assert {"days", "cost_usd", "tokens", "predicted_loss"} <= set(plan["totals"])


def test_confidence_fits_the_budget_at_p90():
    r = runner.invoke(app, ["simulate", "--budget", "100000", "--json", "--confidence", "0.9", "--trials", "200",
                            "--failure-rate", "20"])
    assert r.exit_code == 0, r.output
    sim = json.loads(r.stdout)["simulation"]
    assert sim["cost_at_confidence"] <= 100_000
    assert sim["cost_p90"] <= 100_000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "0"], "--budget must be a positive number"),
        (["--budget", "-5"], "--budget must be a positive number"),
        (["--budget", "500"], "buys no plan that reaches 101B"),
        (["--gpu", "v100"], "Unknown GPU 'v100'"),
        (["--target-size", "1T", "--max-gpus", "8"], "No model of 1000B parameters fits on 8"),
        (["--target-size", "big"], "--target-size must look like 101B"),
        (["--confidence", "1.5"], "--confidence must be between"),
        (["--max-growth-factor", "0.5"], "--max-growth-factor must be at least 1"),
        (["--global-batch", "0"], "--global-batch must be at least 1"),
        (["--max-days", "0"], "--max-days must be positive"),
        (["--carryover", "2"], "carry-over efficiency must be in (0, 1]"),
        (["--loss-law", "kaplan"], "Unknown loss law 'kaplan'"),
        (["--trials", "0"], "--trials must be at least 1"),
        (["--spare-fraction", "2"], "--spare-fraction is a fraction of the nodes, at most 1"),
        (["--target-size", "101"], "--target-size 101 reads as 101 parameters"),
        (["--out", "."], "--out . is a folder"),
        (["--report", "."], "--report . is a folder"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(args, message):
    r = runner.invoke(app, ["simulate", "--trials", "20", *args])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output


def test_budget_that_is_not_a_number():
    r = runner.invoke(app, ["simulate", "--budget", "lots"])
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_small_budget_names_the_smallest_that_works():
    r = runner.invoke(app, ["simulate", "--budget", "500", "--trials", "20"])
    assert "the smallest that would work is about $" in r.output


def test_export_formats(tmp_path, flm_plan):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(flm_plan.to_json()))
    r = runner.invoke(app, ["export", str(path), "--to", "megatron", "--out-dir", str(tmp_path / "m"),
                            "--rope-for-xpos"])
    assert r.exit_code == 0, r.output
    args = (tmp_path / "m" / "stage3.megatron.args").read_text()
    for flag in ("--tensor-model-parallel-size 4", "--pipeline-model-parallel-size 4", "--sequence-parallel",
                 "--global-batch-size 2160", "--use-distributed-optimizer", "--num-layers 80"):
        assert flag in args
    r = runner.invoke(app, ["export", str(path), "--to", "torchtitan", "--out-dir", str(tmp_path / "t")])
    toml = (tmp_path / "t" / "stage2.torchtitan.toml").read_text()
    assert "tensor_parallel_degree = 4" in toml and "pipeline_parallel_degree = 2" in toml
    import tomllib

    cfg = tomllib.loads(toml)
    par = cfg["parallelism"]
    assert par["data_parallel_replicate_degree"] * par["data_parallel_shard_degree"] * 4 * 2 == 192
    r = runner.invoke(app, ["export", str(path), "--to", "slurm", "--out-dir", str(tmp_path / "s")])
    script = (tmp_path / "s" / "flmplan.sbatch").read_text()
    # 24 working nodes and the simulation's one spare; data required; checkpoints at the
    # simulation's interval in the slowest stage's steps.
    spares = flm_plan.simulation["spare_nodes"]
    assert f"#SBATCH --nodes={24 + spares}" in script and "srun --nodes=24" in script
    assert '--data "$DATA"' in script and ': "${DATA:?' in script
    interval = flm_plan.simulation["checkpoint_interval_min"] * 60
    every = min(max(1, round(interval / st.predicted.step_s)) for st in flm_plan.stages)
    assert f"--checkpoint-every {every}" in script and "--rdzv-backend=c10d" in script
    subprocess.run(["bash", "-n", str(tmp_path / "s" / "flmplan.sbatch")], check=True)


MEGATRON = json.loads((Path(__file__).parent / "data/megatron_args.json").read_text())
# TransformerConfig.__post_init__'s allowed recompute modules at the same commit
# (megatron/core/transformer/transformer_config.py).
MEGATRON_RECOMPUTE_MODULES = {"core_attn", "moe_act", "layernorm", "mla_up_proj", "mlp", "moe", "shared_experts",
                              "gdn_norm_out", "gdp_in_proj", "gdp_qkv", "mhc"}


def megatron_parser() -> argparse.ArgumentParser:
    """Megatron-LM's own parser, rebuilt from its options at the commit tests/data names."""
    parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    for o in MEGATRON["options"]:
        if not o["takes_value"]:
            parser.add_argument(*o["flags"], action="store_true")
        else:
            parser.add_argument(*o["flags"], nargs=o["nargs"], choices=o["choices"])
    return parser


def parse_megatron(text: str) -> argparse.Namespace:
    words = shlex.split(" ".join(line for line in text.splitlines() if not line.startswith("#")).replace("\\", ""))
    try:
        return megatron_parser().parse_args(words)
    except SystemExit:
        pytest.fail(f"Megatron-LM {MEGATRON['commit'][:7]} refuses: {words}")


@pytest.fixture(scope="module")
def plan_300k(tmp_path_factory):
    out = tmp_path_factory.mktemp("p300") / "plan.json"
    r = runner.invoke(app, ["simulate", "--budget", "300000", "--out", str(out), "--trials", "50"])
    assert r.exit_code == 0, r.output
    return out


def test_megatron_exports_parse_with_megatron_lms_parser(tmp_path, flm_plan, auto_plan, plan_300k):
    plans = {"flm": flm_plan, "auto": auto_plan, "300k": load_plan(plan_300k)}
    for name, plan in plans.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(plan.to_json()))
        r = runner.invoke(app, ["export", str(path), "--to", "megatron", "--out-dir", str(tmp_path / name)])
        assert r.exit_code == 2 and "xPos" in r.output and not (tmp_path / name).exists()
        r = runner.invoke(app, ["export", str(path), "--to", "megatron", "--out-dir", str(tmp_path / name),
                                "--rope-for-xpos"])
        assert r.exit_code == 0, r.output
        for k, st in enumerate(plan.stages):
            args = parse_megatron((tmp_path / name / f"stage{k + 1}.megatron.args").read_text())
            lay = st.layout
            assert int(args.train_iters) == st.steps          # iteration 0 at each stage (pretrained start)
            assert (args.pretrained_checkpoint is not None) == (k > 0)
            assert args.save == args.load == f"checkpoints/stage{k + 1}" and int(args.save_interval) >= 1
            assert args.attention_backend == ("flash" if lay.attention == "flash" else "unfused")
            assert not args.use_flash_attn
            if lay.recompute == "selective":
                assert args.recompute_granularity == "selective"
                assert set(args.recompute_modules) <= MEGATRON_RECOMPUTE_MODULES
                assert "layernorm" in args.recompute_modules or lay.attention == "unfused"
            assert args.use_distributed_optimizer == (lay.zero == 1)
            assert args.use_megatron_fsdp == (lay.zero >= 2)
            if lay.zero >= 2:
                assert args.data_parallel_sharding_strategy == ("optim_grads_params" if lay.zero == 3
                                                                else "optim_grads")
            assert float(args.min_lr) == pytest.approx(0.1 * st.lr)


def test_megatron_refuses_what_it_cannot_express(tmp_path):
    """Megatron-LM has no xPos: refused in one sentence naming the field, nothing written."""
    plan = Path(__file__).resolve().parents[1] / "runtime/data/tiny_one_stage.json"
    r = runner.invoke(app, ["export", str(plan), "--to", "megatron", "--out-dir", str(tmp_path / "m")])
    assert r.exit_code == 2 and "Traceback" not in r.output and not (tmp_path / "m").exists()
    text = " ".join(r.output.split())
    assert "xPos (model.position)" in text and "--rope-for-xpos" in text


def test_report_has_the_tables_of_the_console(tmp_path):
    out = tmp_path / "report.html"
    r = runner.invoke(app, ["simulate", "--budget", "100000", "--schedule", "flm", "--trials", "20", "--report",
                            str(out)])
    assert r.exit_code == 0, r.output
    page = out.read_text()
    for title in ("Stages", "Alternatives and baselines", "Assumptions", "Advice"):
        assert f"<h2>{title}" in page
    # Each stage's layout in the one notation, and no Python dict in the assumptions.
    assert "tp4 pp4 dp12" in page and "Layouts: tp, pp, dp" in page
    assumptions = page.split("<h2>Assumptions</h2>")[1].split("</table>")[0]
    assert "{'" not in assumptions and "loss model" in assumptions
