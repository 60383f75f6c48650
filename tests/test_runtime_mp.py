"""The runtime under torchrun with gloo: layout equivalence, two-stage growth through a reshard,
and resume after a kill. Each run has a hard timeout and is checked by its completion marker."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.parallel.cores import _physical_core

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.multiprocess


def torchrun(plan: dict, out: Path, nproc: int, env: dict | None = None, timeout: int = 300,
             output: list | None = None, args: tuple = ()) -> int:
    out.mkdir(parents=True, exist_ok=True)
    plan_path = out.parent / f"{out.name}.plan.json"
    plan_path.write_text(json.dumps(plan))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "runtime.train", "--plan", str(plan_path), "--out", str(out), *args]
    full_env = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    r = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0 and not (env or {}).get("FLMPLAN_KILL_AT"):
        print(r.stdout[-4000:], r.stderr[-4000:])
    if output is not None:
        output.append(r.stdout + r.stderr)
    return r.returncode


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def losses(out: Path, stage: int | None = None, key: str = "loss") -> list[float]:
    """Per step: the language loss (FreeLM's teacher steps have none), or `key` ("teacher_loss")."""
    return [r[key] for r in records(out) if "step" in r and "event" not in r and key in r
            and (stage is None or r["stage"] == stage)]


def events(out: Path) -> dict:
    """The fixed-batch losses just before and after each growth."""
    return {(r["event"], r["growth_into_stage"]): r["loss"] for r in records(out) if "growth_into_stage" in r
            and "loss" in r}


def state_bytes(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return next(r["ranks"] for r in rows if r.get("event") == "state_bytes")


def assert_holds_what_the_planner_charges(out: Path, plan: dict) -> None:
    """Bytes of parameters, gradients and Adam state on the fullest rank, against planner/model/memory.py
    for the same model, layout and ZeRO stage. The planner's 12 bytes of optimizer state per
    parameter are the fp32 master weights and Adam's m and v: in the runtime the fp32 parameters
    are the master weights. ZeRO 1 is run as FSDP2 without resharding, which shards the gradients
    too (ZeRO 2): there the runtime holds 1/dp of the gradients the planner charges for ZeRO 1."""
    from planner.model.memory import memory_per_gpu
    from planner.model.specs import Layout, ModelSpec

    st = plan["stages"][0]
    layout, model = Layout(**st["layout"]), ModelSpec(**st["model"])
    est = memory_per_gpu(model, layout)
    fullest = max(state_bytes(out), key=lambda r: r["params"])
    assert fullest["params"] + fullest["optimizer"] == pytest.approx(est.optimizer_gib * 2**30, rel=1e-6)
    grads = est.grads_gib * 2**30 / (layout.dp if layout.zero == 1 else 1)
    assert fullest["grads"] == pytest.approx(grads, rel=1e-6)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The fp32 single-process run every other run of the tiny one-stage plan is held against."""
    out = tmp_path_factory.mktemp("single") / "run"
    assert torchrun(one_stage(), out, 1) == 0
    return out


def one_stage(**layout) -> dict:
    plan = json.loads((ROOT / "examples/plans/tiny_one_stage.json").read_text())
    plan["stages"][0]["layout"].update(layout)
    lay = plan["stages"][0]["layout"]
    plan["cluster"]["gpus"] = lay["tp"] * lay.get("pp", 1) * lay.get("dp", 1)
    return plan


def test_layouts_give_the_same_losses(single, tmp_path):
    base = losses(single)
    assert len(base) == 6 and base[-1] < base[0]
    assert next(r for r in records(single) if r.get("event") == "start")["pinned_cores"] is None
    cores = sorted(os.sched_getaffinity(0), key=_physical_core)
    assert_holds_what_the_planner_charges(single, one_stage())
    # Plain tp2, tp2 with sequence parallelism and FSDP run here with recompute on top, and alone
    # (with µP and FreeLM) in test_mup_and_freelm_train_alike_on_every_kind_of_layout.
    for name, layout in {"pp2": dict(pp=2, zero=1),
                         "pp2-interleaved": dict(pp=2, interleave=2, micro_batch=2, zero=1),
                         # The ends counted in the split (Llama 3's): chunks of 0, 1, 1 | 1, 1, 0 layers,
                         # the first holding only the embedding and the last only the output layer.
                         "pp2-v3-ends": dict(pp=2, interleave=3, micro_batch=2, zero=1, ends_in_split=True),
                         "tp2-full-recompute": dict(tp=2, recompute="full"),
                         "fsdp2-selective-recompute": dict(dp=2, zero=3, recompute="selective"),
                         "tp2-sp-selective-recompute": dict(tp=2, sequence_parallel=True,
                                                            recompute="selective")}.items():
        out = tmp_path / name
        assert torchrun(one_stage(**layout), out, 2) == 0, name
        assert (out / "DONE.json").exists()
        # Each CPU rank computes on its own core (runtime/parallel/cores.py pin_to_own_cores); rank 0 on the first.
        start = next(r for r in records(out) if r.get("event") == "start")
        assert start["pinned_cores"] == cores[:max(1, len(cores) // 2)]
        # and records the cores the run had, not the rank's pinned share: validate shares them out.
        assert start["cores"] == len(cores)
        got = losses(out)
        assert max(abs(a - b) for a, b in zip(got, base, strict=True)) < 1e-4, (name, got, base)
        assert_holds_what_the_planner_charges(out, one_stage(**layout))


def test_swiglu_untied_gqa_plan_trains_alike_on_every_kind_of_layout(tmp_path):
    """The model fields beyond FLM's own — SwiGLU, an output layer of its own, grouped-query
    attention — are honoured on every layout: the same losses alone, under tensor parallelism
    (gate column-wise, output layer vocabulary-parallel, K/V heads split) and under pipeline
    parallelism (embedding on the first stage, output layer on the last), with the parameter
    bytes the planner charges."""
    def plan(**layout) -> dict:
        p = one_stage(**layout)
        p["stages"][0]["model"].update(activation="swiglu", tied_embeddings=False, kv_heads=2, ffn=176)
        return p

    base_out = tmp_path / "single"
    assert torchrun(plan(), base_out, 1) == 0
    base = losses(base_out)
    assert len(base) == 6 and base[-1] < base[0]
    assert_holds_what_the_planner_charges(base_out, plan())
    for name, layout in {"tp2": dict(tp=2), "pp2": dict(pp=2, zero=1)}.items():
        out = tmp_path / name
        assert torchrun(plan(**layout), out, 2) == 0, name
        got = losses(out)
        assert max(abs(a - b) for a, b in zip(got, base, strict=True)) < 1e-4, (name, got, base)
        assert_holds_what_the_planner_charges(out, plan(**layout))


def test_bf16_tracks_fp32_on_every_kind_of_layout(single, tmp_path):
    """bf16 autocast over fp32 master weights, under FSDP2's MixedPrecisionPolicy (ZeRO 1) and under
    tensor parallelism. bf16 keeps 8 bits of mantissa (rounding 2^-9 ≈ 0.2 % per operation), so
    the losses cannot agree to 1e-4: measured within 0.08 % of fp32 over the six steps, held to
    0.5 %. The losses fall, and parameters, gradients and optimizer state stay fp32."""
    base = losses(single)
    for name, (nproc, layout) in {"fsdp2-zero1": (2, dict(dp=2, zero=1)), "tp2": (2, dict(tp=2))}.items():
        out = tmp_path / name
        plan = one_stage(**layout)
        assert torchrun(plan, out, nproc, args=("--dtype", "bf16")) == 0, name
        got = losses(out)
        assert max(abs(a - b) / b for a, b in zip(got, base, strict=True)) < 0.005, (name, got, base)
        assert got[-1] < got[0] - 0.5
        assert_holds_what_the_planner_charges(out, plan)


def test_compiled_blocks_with_selective_recompute_match_eager(single, tmp_path):
    """torch.compile of each block (inductor, here on the CPU) with selective recompute inside it."""
    out = tmp_path / "compiled"
    env = {"TORCHINDUCTOR_COMPILE_THREADS": "1"}
    assert torchrun(one_stage(recompute="selective"), out, 1, env=env, args=("--compile",), timeout=600) == 0
    got, base = losses(out), losses(single)
    assert max(abs(a - b) for a, b in zip(got, base, strict=True)) < 1e-4, (got, base)


def test_mup_and_freelm_train_alike_on_every_kind_of_layout(single, tmp_path):
    """µP's parameter groups and FreeLM's teacher head follow the shards: the language loss, the teacher
    loss and accuracy, and the held-out teacher evaluation agree alone, under tensor and sequence
    parallelism, pipeline parallelism (the head on the last stage) and FSDP. Every 3rd step is a teacher
    batch; µP is in force (width 64 over base 32: the first loss is not SP's)."""
    from runtime.objectives.freelm import synthetic_propositions, write_teacher_file

    teacher = write_teacher_file(synthetic_propositions(200, seed=1), tmp_path / "teacher.jsonl")

    def plan(**layout) -> dict:
        p = one_stage(**layout)
        p["stages"][0]["steps"] = 6
        p["stages"][0]["parametrization"] = {"kind": "mup", "base_width": 32, "output_mult": 2.0}
        p["stages"][0]["objective"] = {"kind": "freelm", "teacher_every": 3, "teacher_data": str(teacher)}
        return p

    def signals(out: Path) -> list:
        return [(r["step"], r.get("signal", "language")) for r in records(out) if "step" in r and "event" not in r]

    def figures(out: Path) -> list[float]:
        evals = [r["accuracy"] for r in records(out) if r.get("event") == "teacher_eval"]
        return losses(out) + losses(out, key="teacher_loss") + losses(out, key="teacher_accuracy") + evals

    base_out = tmp_path / "single"
    assert torchrun(plan(), base_out, 1, args=("--checkpoint-every", "3")) == 0
    assert signals(base_out) == [(s, "teacher" if s % 3 == 2 else "language") for s in range(6)]
    assert len([r for r in records(base_out) if r.get("event") == "teacher_eval"]) == 2
    assert abs(losses(base_out)[0] - losses(single)[0]) > 1e-3
    base = figures(base_out)
    for name, layout in {"tp2-sp": dict(tp=2, sequence_parallel=True), "pp2": dict(pp=2, zero=1),
                         "fsdp2": dict(dp=2, zero=3)}.items():
        out = tmp_path / name
        assert torchrun(plan(**layout), out, 2, args=("--checkpoint-every", "3")) == 0, name
        got = figures(out)
        assert len(got) == len(base) and max(abs(a - b) for a, b in zip(got, base, strict=True)) < 1e-4, name


@pytest.fixture(scope="module")
def two_stage(tmp_path_factory):
    """The tiny growth plan under µP and FreeLM's objective: width 64 → 128 over base 64 doubles
    width_mult at the growth, through a change from FSDP to tensor × pipeline parallelism with
    sequence parallelism; every 4th step is a teacher batch, and the teacher head grows too."""
    from runtime.objectives.freelm import synthetic_propositions, write_teacher_file

    folder = tmp_path_factory.mktemp("two")
    teacher = write_teacher_file(synthetic_propositions(200, seed=2), folder / "teacher.jsonl")
    plan = json.loads((ROOT / "examples/plans/tiny_two_stage.json").read_text())
    for st in plan["stages"]:
        st["steps"] = 16
        st["parametrization"] = {"kind": "mup", "base_width": 64, "output_mult": 2.0}
        st["objective"] = {"kind": "freelm", "teacher_every": 4, "teacher_data": str(teacher)}
    out = folder / "run"
    assert torchrun(plan, out, 4) == 0
    return plan, out


def test_two_stage_growth_with_a_layout_change(two_stage):
    _plan, out = two_stage
    assert (out / "DONE.json").exists()
    # Growth stages are numbered from 1 in metrics.jsonl and checkpoint names, as on the console.
    assert {p.name.split("-")[0] for p in (out / "checkpoints").iterdir()} == {"stage1", "stage2"}
    # Each checkpoint logs what it took (kept out of the step timings).
    saves = [r for r in records(out) if r.get("event") == "checkpoint"]
    assert {r["stage"] for r in saves} == {1, 2} and all(r["seconds"] > 0 for r in saves)
    for k in (1, 2):
        assert len(losses(out, k)) == 12 and len(losses(out, k, "teacher_loss")) == 4   # steps 3, 7, 11, 15 teach
    first, grown = losses(out, 1), losses(out, 2)
    # The loss falls in the first stage; the grown stage (12 noisy language steps, 8 of them under
    # the mask ramp) goes on from there, never back up to where the first stage began.
    assert sum(first[-3:]) / 3 < sum(first[:3]) / 3 and max(grown) < first[0]
    ev = events(out)
    before, after = ev[("before_growth", 2)], ev[("after_growth", 2)]
    assert abs(after - before) / before < 1e-5      # µP's readout compensated across the reshard


def test_resume_after_a_kill_ends_where_an_uninterrupted_run_does(two_stage, tmp_path):
    plan, reference = two_stage
    out = tmp_path / "killed"
    # Rank 0 dies (SIGKILL) right after the first stage's last checkpoint, before the probe of the
    # growth; then in the grown stage at step 8, three steps after its last checkpoint.
    env = {"FLMPLAN_STEP_HOOKS": "tests.hooks:kill_at", "FLMPLAN_KILL_AT": "0:16,1:8"}
    assert torchrun(plan, out, 4, env=env) != 0
    assert events(out) == {}
    assert torchrun(plan, out, 4, env=env) != 0
    assert not (out / "DONE.json").exists()
    # The probe before the growth was re-run from the first stage's final checkpoint.
    ev = events(out)
    assert abs(ev[("after_growth", 2)] - ev[("before_growth", 2)]) / ev[("before_growth", 2)] < 0.01
    # A half-written checkpoint from the crash must not be used: leave a truncated one behind.
    newest = sorted((out / "checkpoints").iterdir())[-1]
    bogus = out / "checkpoints" / "stage2-step0000099"
    bogus.mkdir()
    manifest = {"stage": 2, "stage_numbering": 1, "step": 99, "data_position": 0, "global_step": 10**6,
                "files": {"__0_0.distcp": "0"}}
    (bogus / "manifest.json").write_text(json.dumps(manifest))
    (bogus / "__0_0.distcp").write_text("truncated")
    printed: list[str] = []
    r = torchrun(plan, out, 4, env=env, output=printed)
    assert r == 0 and (out / "DONE.json").exists()
    # The bad checkpoint is named, with what is wrong with it, and the one before it is used.
    assert "stage2-step0000099 is unusable" in printed[0] and "does not match its checksum" in printed[0]
    assert "resuming from stage2-step0000005" in printed[0]
    assert newest.name == "stage2-step0000005"
    final = losses(out, 2)[-1]
    assert final == pytest.approx(losses(reference, 2)[-1], abs=1e-5)
    # The same sequences at every step, through the kills and the growth from dp = 4 to dp = 1 (the steps
    # after a checkpoint that the kill lost were trained again: their last records count).
    digests = [{(r["stage"], r["step"]): r["data_digest"] for r in records(run) if "data_digest" in r}
               for run in (out, reference)]
    assert digests[0] == digests[1] and len(digests[0]) == 24
    # The teacher batches after the resume are the ones the uninterrupted run had (chosen by the step).
    assert losses(out, 2, "teacher_loss")[-1] == pytest.approx(losses(reference, 2, "teacher_loss")[-1], abs=1e-5)


def test_flmplan_run_scales_the_flm_plan_to_this_machine(tmp_path):
    """The launcher: FLM-101B's three stages, tiny, under torchrun --standalone; with --log-every 1
    every step is its own timing window."""
    out = tmp_path / "flm"
    r = subprocess.run([sys.executable, "-m", "flmplan.cli", "run", "examples/plans/flm101b_plan.json", "--scale",
                        "tiny", "--nproc", "2", "--steps", "3", "--out", str(out), "--log-every", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (out / "DONE.json").exists()
    plan = json.loads((out / "plan.json").read_text())
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for k, stage in enumerate(plan["stages"]):
        assert len({m["step_s"] for m in lines if "step_s" in m and m.get("stage") == k + 1}) == stage["steps"], k
    ev = events(out)
    for k in (2, 3):                            # the growths into stages 2 and 3, numbered from 1
        assert abs(ev[("after_growth", k)] - ev[("before_growth", k)]) < 1e-4


def test_large_model_path_builds_on_meta_and_trains(tmp_path):
    """Models above --meta-above are built on the meta device and only their shards allocated."""
    out = tmp_path / "meta"
    plan = one_stage(tp=2, dp=2, zero=3)
    plan_path = tmp_path / "meta.plan.json"
    plan_path.write_text(json.dumps(plan))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "-m",
           "runtime.train", "--plan", str(plan_path), "--out", str(out), "--meta-above", "0"]
    env = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    got = losses(out)
    assert len(got) == 6 and got[-1] < got[0] and abs(got[0] - 5.55) < 0.3   # ≈ ln 256 at init


def test_sigterm_saves_the_step_in_flight_and_resumes_bit_identically(tmp_path):
    """Ctrl-C (or a scheduler's SIGTERM) to `flmplan run`: every rank finishes its step, the run saves it,
    flmplan says so in one line with nothing of torchrun's shutdown, and exits 143; the same command
    resumes there and ends on the uninterrupted run's loss exactly."""
    import signal
    import time

    plan = one_stage(dp=2, zero=3)
    plan["stages"][0]["steps"] = 24
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))

    def flmplan_run(out: Path) -> subprocess.Popen:
        # In its own process group, as a terminal's foreground job is: Ctrl-C is SIGINT to the whole group.
        return subprocess.Popen([sys.executable, "-m", "flmplan.cli", "run", str(path), "--nproc", "2", "--out",
                                 str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)

    reference = tmp_path / "reference"
    assert flmplan_run(reference).wait(timeout=300) == 0
    out = tmp_path / "preempted"
    child = flmplan_run(out)
    deadline = time.time() + 240
    while time.time() < deadline and (not (out / "metrics.jsonl").exists() or len(losses(out)) < 6):
        time.sleep(0.2)
    os.killpg(child.pid, signal.SIGINT)                    # Ctrl-C; a scheduler's SIGTERM ends the same way
    printed = child.communicate(timeout=120)[0]
    assert child.returncode == 143, printed[-3000:]
    assert " ".join(printed.split()).split("preempted: saved stage 1")[-1].strip().startswith(
        "at step"), printed[-3000:]
    assert "Stopped by SIGINT: the step in flight was saved" in " ".join(printed.split()), printed[-3000:]
    assert "Traceback" not in printed and "SignalException" not in printed, printed[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    stopped = next(r for r in rows if r.get("event") == "preempted")
    assert 6 <= stopped["step"] < 24 and stopped["saved"]
    assert (out / "checkpoints" / f"stage1-step{stopped['step']:07d}").exists()
    assert not (out / "RUNNING.lock").exists()
    assert flmplan_run(out).wait(timeout=300) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    starts = [r for r in rows if r.get("event") == "start"]
    assert [s["resume_from"] for s in starts] == [None, f"stage1-step{stopped['step']:07d}"]
    assert losses(out)[-1] == losses(reference)[-1]
    # Another plan into the same folder: its checkpoints are refused in one sentence, no resume advice.
    plan["stages"][0]["steps"] = 25
    path.write_text(json.dumps(plan))
    child = flmplan_run(out)
    printed = child.communicate(timeout=300)[0]
    assert child.returncode == 2 and "was written by a different plan" in printed
    assert "start the same command again" not in printed.splitlines()[-1]


COMM_COUNTS = '''
import json, sys, torch, torch.distributed as dist
from torch.distributed.tensor.debug import CommDebugMode
from planner.model.specs import Layout
from runtime.model.decoder import Decoder, DecoderConfig
from runtime.parallel.parallelize import make_mesh, parallelize
dist.init_process_group("gloo")
out = {}
for sp, recompute in ((False, "none"), (True, "none"), (True, "selective")):
    for layers in (1, 3):
        layout = Layout(tp=2, pp=1, dp=1, micro_batch=2, global_batch=2, sequence_parallel=sp, zero=0,
                        recompute=recompute)
        torch.manual_seed(0)
        model = Decoder(DecoderConfig(layers=layers, hidden=64, heads=4, ffn=256, vocab=256, seq=32))
        pm = parallelize(model, layout, make_mesh(layout, "cpu"), torch.device("cpu"))
        tokens = torch.randint(0, 256, (2, 33), generator=torch.Generator().manual_seed(0))
        with CommDebugMode() as comm:
            pm.train_batch(tokens[:, :-1], tokens[:, 1:])
        out[f"{sp}-{recompute}-{layers}"] = {str(k).split(".")[-1]: v for k, v in comm.get_comm_counts().items()}
if dist.get_rank() == 0:
    json.dump(out, open(sys.argv[1], "w"))
dist.destroy_process_group()
'''


def test_tensor_parallel_blocks_communicate_what_the_planner_charges(tmp_path):
    """Per layer, forward and backward, as planner/cost/step.py charges (Korthikanti et al. 2022, §4.2.2):
    two all-reduces each way, or with sequence parallelism two all-gathers and two reduce-scatters
    each way, and selective recompute re-runs the two all-gathers. (Each column-parallel layer
    summing its own input gradient would add all-reduces in backward; a plain gather, an
    all-reduce and a slice.)"""
    script, counts = tmp_path / "comm_counts.py", tmp_path / "counts.json"
    script.write_text(COMM_COUNTS)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script),
           str(counts)]
    env = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    got = json.loads(counts.read_text())

    def per_layer(key: str) -> dict:          # 3 layers less 1: the blocks alone, without the ends
        three, one = got[f"{key}-3"], got[f"{key}-1"]
        return {op: (three.get(op, 0) - one.get(op, 0)) / 2 for op in set(three) | set(one)
                if three.get(op, 0) != one.get(op, 0)}

    assert per_layer("False-none") == {"all_reduce": 4}
    sp = {"all_gather_into_tensor": 4, "reduce_scatter_tensor": 4}
    assert per_layer("True-none") == sp
    # Under sequence parallelism the LayerNorms' gradients are summed over the group too, all of
    # them in one all-reduce a step, as in Megatron-LM: one more than without it, at any depth.
    assert got["True-none-3"]["allreduce_"] == got["True-none-1"]["allreduce_"] == got["False-none-3"].get(
        "allreduce_", 0) + 1
    assert per_layer("True-selective") == {**sp, "all_gather_into_tensor": 6}
