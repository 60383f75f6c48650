"""`flmplan validate` on run folders with known numbers, and its refusals of bad input."""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flmplan.cli import app
from planner.cost.device_profile import builtin_profile
from planner.cost.step import estimate_step
from planner.model.specs import ClusterSpec, get_gpu
from planner.plan.plan_file import load_plan

ROOT = Path(__file__).resolve().parents[1]
PLAN = ROOT / "examples/plans/tiny_one_stage.json"
runner = CliRunner()
START = {"event": "start", "processes": 1, "device": "NVIDIA A800-SXM4-80GB", "device_kind": "cuda",
         "gpu": "a800-80gb", "dtype": "bf16"}


def predicted():
    """The cost model's figures for the plan's stage on one A800: what validate compares with."""
    plan = load_plan(PLAN)
    st = plan.stages[0]
    est = estimate_step(st.model, ClusterSpec(gpu=get_gpu("a800-80gb"), gpus=1, gpus_per_node=8), st.layout,
                        builtin_profile("a800-80gb"))
    return st, est


def write_run(folder: Path, windows: list[tuple[str, float]], stage_name: str = "tiny", mfu: float = 0.3,
              start: dict = START, memory: float | None = None) -> Path:
    """A run folder: plan.json and metrics.jsonl with one record per step; each window is four
    steps that share one timing ("start" begins a new (re)start)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(PLAN, folder / "plan.json")
    st, est = predicted()
    tokens = st.layout.global_batch * st.model.seq
    memory = est.memory.total_gib / 0.9 if memory is None else memory
    lines, step = [], 0
    for kind, step_s in windows:
        if kind == "start":
            lines.append(json.dumps(start))
            continue
        for _ in range(4):
            lines.append(json.dumps({"stage": 1, "stage_name": stage_name, "step": step, "loss": 5.0,
                                     "step_s": step_s, "tokens_per_s": tokens / step_s, "mfu": mfu,
                                     "memory_gib_per_gpu": memory}))
            step += 1
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_validate_leaves_out_warm_up_and_computes_the_errors(tmp_path):
    _, est = predicted()
    p = est.iteration_s
    # Warm-up windows at 10× (left out), steady windows at 1.2× and 1.3× the prediction: median
    # 1.25×, so the prediction is 1/1.25 − 1 = −20 % on step time and +25 % on tokens/s; MFU
    # 0.3 measured becomes 0.3 × 1.25 = 0.375 predicted; memory measured at prediction / 0.9: −10 %.
    run = write_run(tmp_path / "run", [("start", 0), ("w", 10 * p), ("w", 1.2 * p),
                                       ("start", 0), ("w", 10 * p), ("w", 1.3 * p)])
    r = runner.invoke(app, ["validate", str(run), "--json"])
    assert r.exit_code == 1, r.output          # −20 % is past the default 15 %
    out = json.loads(r.stdout)
    (stage,) = out["stages"]
    assert stage["warmup_steps"] == 8 and stage["steps"] == 8
    assert stage["step_error"] == pytest.approx(-0.20)
    assert stage["tokens_error"] == pytest.approx(0.25)
    assert stage["predicted_mfu"] == pytest.approx(0.375)
    assert stage["memory_error"] == pytest.approx(-0.10)
    assert stage["memory_judged"] is True
    assert out["checkpoints"] is None
    assert runner.invoke(app, ["validate", str(run), "--tolerance", "0.25"]).exit_code == 0
    # Checkpoints log their own seconds (left out of the step times): validate says what they took.
    with (run / "metrics.jsonl").open("a") as f:
        for seconds in (0.5, 0.25, 2.0):
            f.write(json.dumps({"event": "checkpoint", "stage": 1, "step": 4, "seconds": seconds}) + "\n")
    r = runner.invoke(app, ["validate", str(run), "--json"])
    assert json.loads(r.stdout)["checkpoints"] == {"count": 3, "median_s": 0.5, "max_s": 2.0}
    assert json.loads(r.stdout)["stages"][0]["step_error"] == pytest.approx(-0.20)
    shown = runner.invoke(app, ["validate", str(run), "--tolerance", "0.25"]).output
    assert "3 written, 0.5 s each" in shown
    # The error as a person reads it: −20 % of the step time predicted is a run 1.25× slower than planned.
    assert "1.25×" in shown and "slower" in shown and "faster" not in shown


def test_validate_fails_on_memory_alone(tmp_path):
    _, est = predicted()
    run = write_run(tmp_path / "run", [("start", 0), ("w", 10 * est.iteration_s), ("w", est.iteration_s)],
                    memory=est.memory.total_gib * 2)
    r = runner.invoke(app, ["validate", str(run), "--json"])
    assert r.exit_code == 1
    assert json.loads(r.stdout)["stages"][0]["memory_error"] == pytest.approx(-0.5)


def _bad(args):
    r = runner.invoke(app, ["validate", *args])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    return " ".join(r.output.split())


def test_validate_refuses_bad_input_in_one_sentence(tmp_path):
    assert "not a run folder" in _bad([str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    assert "no metrics.jsonl" in _bad([str(tmp_path / "empty")])
    only_start = write_run(tmp_path / "started", [("start", 0)])
    assert "no step records" in _bad([str(only_start)])
    warm_only = write_run(tmp_path / "warm", [("start", 0), ("w", 1.0)])
    assert "only warm-up steps" in _bad([str(warm_only)])
    other = write_run(tmp_path / "other", [("start", 0), ("w", 1.0), ("w", 1.0)], stage_name="big")
    assert "plan does not match the run" in _bad([str(other)])
    cpu = write_run(tmp_path / "cpu", [("start", 0), ("w", 1.0), ("w", 1.0)],
                    start={"event": "start", "processes": 1, "device": "cpu", "device_kind": "cpu", "threads": 2,
                           "cores": 2, "dtype": "fp32"})
    assert "flmplan profile --device cpu" in _bad([str(cpu)])
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "metrics.jsonl").write_bytes(b"\x00\xff{not json\n")
    assert "damaged" in _bad([str(tmp_path / "garbage")])
    assert "--tolerance" in _bad([str(cpu), "--tolerance", "-1"])


def test_validate_refuses_a_plan_with_another_batch(tmp_path):
    run = write_run(tmp_path / "run", [("start", 0), ("w", 1.0), ("w", 1.0)])
    plan = json.loads(PLAN.read_text())
    plan["stages"][0]["layout"]["global_batch"] = 32
    (tmp_path / "other.json").write_text(json.dumps(plan))
    assert "plan does not match the run" in _bad([str(run), "--plan", str(tmp_path / "other.json")])


def test_refit_learns_a_slower_machine_and_improves_held_out_runs(tmp_path):
    """Runs measured at twice the built-in profile's prediction: the refit profile's factors make
    the held-out run's error fall from −50 % to near 0, and the profile names its runs."""
    _, est = predicted()
    p = est.iteration_s
    fit = write_run(tmp_path / "fit", [("start", 0), ("w", 10 * p), ("w", 2 * p), ("w", 2 * p)])
    held = write_run(tmp_path / "held", [("start", 0), ("w", 10 * p), ("w", 2 * p)])
    out = tmp_path / "refit.json"
    r = runner.invoke(app, ["profile", "--refit", str(fit), "--holdout", str(held), "--out", str(out)])
    assert r.exit_code == 0, r.output
    from planner.cost.device_profile import load_profile

    prof = load_profile(out)
    cal = prof.calibration
    assert prof.source == "refit" and cal["fitted_to"] == [str(fit)] and cal["held_out"] == [str(held)]
    assert cal["rms_held_out_before"] == pytest.approx(0.5, abs=1e-3)
    assert cal["rms_held_out_after"] < 0.03
    assert all(f > 1 for f in cal["time_factors"].values() if f != 1.0)
    v = runner.invoke(app, ["validate", str(held), "--profile", str(out), "--json"])
    assert v.exit_code == 0 and abs(json.loads(v.stdout)["stages"][0]["step_error"]) < 0.03
    # A plan made with the refit profile draws the model's error from these runs, not the production
    # runs: the held-out run's factor is near 1, and the simulated cost's band narrows.
    from planner.cost.model_error import model_error_for, production_error
    from planner.sim.whole_run import FailureModel, StageWork, monte_carlo

    own, production = model_error_for(prof), production_error()
    assert "your own runs, held out" in own.source and abs(own.mean() - 1) < 0.03

    def band(error) -> float:
        s = monte_carlo([StageWork("s", 20 * 86400)], 12, 8, 1.0, FailureModel(), 200, 0, 1e9, error)
        costs = [t.cost_usd for t in s.trials]
        return s.quantile(costs, 0.9) - s.quantile(costs, 0.1)

    assert band(own) < band(production) / 3


def test_refit_refuses_bad_input(tmp_path):
    r = runner.invoke(app, ["profile", "--refit", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "not a run folder" in " ".join(r.output.split())
    r = runner.invoke(app, ["profile", "--holdout", str(tmp_path)])
    assert r.exit_code == 2 and "go with --refit" in r.output


def test_cpu_ranks_sharing_cores_slow_kernels_and_the_tensor_parallel_host_time():
    """Kernels scale with the cores a rank gets against the profile's threads; the tensor-parallel
    host time and gloo's collectives (one thread's work each) slow only where a rank has less than
    a core, against the cores its probe's ranks had; a pipeline's waiting ranks lend theirs."""
    from dataclasses import replace

    from planner.plan.validation import RunRecord, shared_cores

    base = builtin_profile("a800-80gb")
    tp = {"layer_pass_overhead_s": 0.01, "sequence_parallel_layer_pass_overhead_s": 0.02,
          "probe": {"rank_cores": 1.0}}
    profile = replace(base, device={**base.device, "kind": "cpu"}, software={**base.software, "threads": 2},
                      collectives={**base.collectives, "tensor_parallel": tp})

    def run(processes: int) -> RunRecord:
        return RunRecord(folder=Path("x"), steps=[], start={"device_kind": "cpu", "cores": 2, "threads": 1,
                                                             "processes": processes})

    two, four = shared_cores(run(2), profile), shared_cores(run(4), profile)
    assert two.time_factors()["gemm"] == pytest.approx(2.0) and four.time_factors()["gemm"] == pytest.approx(4.0)
    # A profile that does not say its threads was measured on all the machine's cores, the profiler's default.
    unsaid = replace(profile, software={})
    assert shared_cores(run(4), unsaid).time_factors()["gemm"] == pytest.approx(4.0)
    # gloo's collectives run on the ranks' cores too: half a core each, twice as long.
    for kind in ("host", "collectives"):
        assert two.time_factors()[kind] == pytest.approx(1.0) and four.time_factors()[kind] == pytest.approx(2.0)
    from planner.cost.comm import Network

    assert Network(two).tp_pass_overhead == {False: pytest.approx(0.01), True: pytest.approx(0.02)}
    assert Network(four).tp_pass_overhead[True] == pytest.approx(0.04)
    # A pipeline's fill and drain leave one of two stages computing: with 4 one-thread ranks on 2 cores
    # the busy ranks get a whole core each, twice their share; 2 ranks on 2 cores had a core already.
    from planner.model.specs import Layout, ModelSpec

    model = ModelSpec(layers=2, hidden=1024, heads=8, ffn=4096, vocab=8192, seq=1024)

    def bubble(prof, gpus: int) -> float:
        lay = Layout(tp=gpus // 2, pp=2, dp=1, micro_batch=1, global_batch=4, zero=1)
        return estimate_step(model, ClusterSpec(gpu=get_gpu("a800-80gb"), gpus=gpus), lay, prof).breakdown.bubble_s

    unshared = replace(four, device={k: v for k, v in four.device.items() if k != "shared_cores"})
    assert bubble(four, 4) == pytest.approx(bubble(unshared, 4) / 2)
    assert bubble(two, 2) == pytest.approx(bubble(replace(two, device=unshared.device), 2))


def test_freelm_teacher_steps_are_counted_like_language_steps(tmp_path):
    """A FreeLM run's teacher steps have no language loss but the same batch: validate times them with
    the rest (every step's tokens count) and says how many there were."""
    _, est = predicted()
    p = est.iteration_s
    run = write_run(tmp_path / "run", [("start", 0), ("w", 10 * p), ("w", p), ("w", p)])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        if r.get("step", 0) % 2 == 1:          # every 2nd step a teacher batch
            del r["loss"]
            r.update(signal="teacher", teacher_loss=0.69, teacher_accuracy=0.5)
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = json.loads(runner.invoke(app, ["validate", str(run), "--json"]).stdout)
    (stage,) = out["stages"]
    assert stage["steps"] == 8 and stage["teacher_steps"] == 4 and stage["step_error"] == pytest.approx(0.0)
    assert "FreeLM's teacher steps" in runner.invoke(app, ["validate", str(run)]).output


def test_a_compiled_gpu_run_is_predicted_with_its_element_wise_ops_fused(tmp_path):
    """A GPU run that compiled its blocks (its step records say `compile`) is costed with
    Software(compiled=True): every element-wise op at the fastest element-wise kernel the profile
    measured, not at its own eager kernel's; the same run eager is costed as eager."""
    from dataclasses import replace

    from planner.cost.device_profile import save_profile
    from planner.model.specs import Software

    base = builtin_profile("a800-80gb")
    # Per-op eager bandwidths as a measured profile has them: rotary slow, the residual add fastest.
    prof = replace(base, memory_bound={**base.memory_bound, "ops": {"rotary": 100.0, "residual_add": 1900.0}})
    path = save_profile(prof, tmp_path / "a800-ops.json")
    cluster = ClusterSpec(gpu=get_gpu("a800-80gb"), gpus=1, gpus_per_node=8)
    figures = {}
    for compiled in (False, True):
        run = write_run(tmp_path / f"run-{compiled}", [("start", 0), ("w", 10.0), ("w", 1.0)])
        # The tiny plan's layers are too small to be more than their launches on a GPU: widen them.
        raw = json.loads((run / "plan.json").read_text())
        raw["stages"][0]["model"].update(hidden=2048, heads=16, ffn=8192)
        (run / "plan.json").write_text(json.dumps(raw))
        st = load_plan(run / "plan.json").stages[0]
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        (run / "metrics.jsonl").write_text("".join(json.dumps({**r, "compile": compiled} if "step" in r else r) + "\n"
                                                   for r in lines))
        r = runner.invoke(app, ["validate", str(run), "--profile", str(path), "--json", "--tolerance", "10"])
        assert r.exit_code == 0, r.output
        (stage,) = json.loads(r.stdout)["stages"]
        assert stage["compiled"] is compiled
        est = estimate_step(st.model, cluster, st.layout, prof, software=Software(compiled=compiled))
        figures[compiled] = stage["predicted_step_s"]
        assert figures[compiled] == pytest.approx(est.iteration_s)
    assert figures[True] < figures[False]      # the slow eager rotary is gone
