"""`flmplan run`: execute a plan under torchrun."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from flmplan.common import VALIDATE_TOLERANCE, Dtype, Scale, check_output_folder, stdout, value_of


def run(
    plan_file: Annotated[Path, typer.Argument(help="A plan (flmplan simulate --out), or examples/plans/*.json.")],
    nproc: Annotated[int, typer.Option(min=1, help="Processes on this machine (torchrun --nproc-per-node).")] = 4,
    scale: Annotated[Scale, typer.Option(case_sensitive=False, help="tiny maps every stage to a CPU-sized model "
                                         "with the same growth steps; full runs the plan as written.")] = Scale.full,
    out: Annotated[Path, typer.Option(
        help="The run folder (checkpoints, metrics.jsonl); the same folder resumes the run.")] = Path("runs/latest"),
    data: Annotated[list[str] | None, typer.Option(help="Prepared corpora (`flmplan data prepare`: PREFIX of "
                                                        "PREFIX.bin/.idx), each as WEIGHT:PREFIX for a mixture, a "
                                                        "folder or glob of them, or a mixture file (JSON of prefix: "
                                                        "weight); or text files or folders, as bytes (default: the "
                                                        "Python standard library's sources).")] = None,
    steps: Annotated[int, typer.Option(min=1, help="With --scale tiny: optimizer steps per stage (a grown stage "
                                                    "adds its 8 mask-ramp steps).")] = 40,
    max_restarts: Annotated[int, typer.Option(min=0, help="torchrun restarts after a failure (resumes from the "
                                                   "newest good checkpoint).")] = 0,
    dtype: Annotated[Dtype | None, typer.Option(case_sensitive=False, help="Instead of the plan's dtype (default: "
                                                "the plan's on GPUs, fp32 on CPUs).")] = None,
    compile: Annotated[bool | None, typer.Option("--compile/--no-compile", help="torch.compile each block "
                                                 "(default: on with GPUs, off on CPUs).")] = None,
    from_scratch: Annotated[bool, typer.Option("--from-scratch", help="Start over when no checkpoint in --out "
                                               "is usable (by default the run stops and says so).")] = False,
    teacher_data: Annotated[Path | None, typer.Option(
        help="Propositions for the plan's FreeLM stages (JSON lines: text, proposition, label; or iq: the IQ "
             "generators' train split), instead of the plan's teacher_data.")] = None,
    log_every: Annotated[int, typer.Option(min=1, help="Steps between metrics lines: the timing window "
                                           "`flmplan validate` takes medians over.")] = 10,
    pin_cores: Annotated[bool, typer.Option("--pin-cores/--no-pin-cores", help="On a CPU, keep each process's "
                                            "computing thread on its own share of the cores.")] = True,
) -> None:
    """Execute a plan with torch.distributed under torchrun --standalone (docs/cluster.md for clusters)."""

    from planner.errors import FlmplanError
    from planner.plan.plan_file import load_plan

    plan = load_plan(plan_file)
    check_output_folder(out, "--out")
    # The data, before any process starts: it exists, is whole (or UTF-8 text), and fits the plan.
    from runtime.data.corpus import check_corpus, load_corpus

    corpus = load_corpus(data or (plan.data.specs() if plan.data else None))
    if scale is Scale.tiny:
        from planner.plan.plan_file import plan_from_dict
        from runtime.model.scale import tiny_plan

        plan = plan_from_dict(tiny_plan(plan.to_json(), nproc, steps, vocab=corpus.vocab),
                              origin=f"Plan {plan_file} at --scale tiny")
    from runtime.model.decoder import check_trainable

    for k, st in enumerate(plan.stages):
        check_trainable(st.model, f"Stage {k + 1}'s model")
        lay = st.layout
        if lay.gpus != nproc:
            raise FlmplanError(
                f"Stage {k + 1} needs tp·pp·dp = {lay.tp}·{lay.pp}·{lay.dp} = {lay.gpus} processes but --nproc "
                f"is {nproc}; use --scale tiny to map the plan onto this machine, or run it on its cluster with "
                "the torchrun line in docs/cluster.md."
            )
    check_corpus(corpus, plan)
    plan = _with_teacher_data(plan, teacher_data, corpus)
    out.mkdir(parents=True, exist_ok=True)
    if _finished(out, plan):
        return
    lock = _lock_run_folder(out)
    try:
        _launch(plan.to_json(), out, nproc, max_restarts, data, value_of(dtype), compile, from_scratch, log_every,
                pin_cores)
    finally:
        lock.unlink(missing_ok=True)
    _validate_after_run(out)


def _with_teacher_data(plan, teacher_data: Path | None, corpus):
    """The plan with --teacher-data in its FreeLM stages (as an absolute path, so the run folder's copy
    of the plan resumes from anywhere), each stage's teacher file checked before any process starts."""
    from planner.errors import FlmplanError
    from planner.plan.plan_file import plan_from_dict
    from runtime.objectives.freelm import teacher_samplers, teacher_source

    if teacher_data is not None and not plan.freelm_stages():
        raise FlmplanError("--teacher-data is for plans with a FreeLM objective; this plan trains language only "
                           "(plan one with `flmplan simulate --teacher-every K`).")
    raw = plan.to_json()
    for k in plan.freelm_stages():
        given = teacher_data or raw["stages"][k]["objective"].get("teacher_data")
        raw["stages"][k]["objective"]["teacher_data"] = teacher_source(given)
    plan = plan_from_dict(raw)
    teacher_samplers(plan, seed=0, corpus=corpus)
    return plan


def _finished(out: Path, plan) -> bool:
    """A run folder that already finished this plan: say so instead of starting it again."""
    from planner.plan.plan_file import plan_fingerprint

    done = out / "DONE.json"
    if not done.is_file():
        return False
    try:
        record = json.loads(done.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    if not isinstance(record, dict) or record.get("plan_fingerprint") != plan_fingerprint(plan):
        return False
    n = record.get("stages")
    stdout.print(f"Run complete: {n} stage{'' if n == 1 else 's'} in {out} — nothing to do (metrics in "
                 f"{out / 'metrics.jsonl'}; `flmplan validate {out}` holds it against the plan; a new --out "
                 "starts another run).")
    return True


def _validate_after_run(out: Path) -> None:
    """Every finished run is held against its plan: on a GPU with the built-in profile; on a CPU,
    which has none, the command that does it."""
    from planner.plan.validation import ValidateError, check_run, load_run, run_profile_for

    run, plan = load_run(out)
    if run.start.get("device_kind") == "cpu":
        stdout.print(f"Check the run against its plan: flmplan validate {out} --profile cpu-profile.json "
                     "(measure this machine with `flmplan profile --device cpu --out cpu-profile.json`)")
        return
    try:
        prof = run_profile_for(run, plan, None)
        checks = check_run(run, plan, prof)
    except ValidateError as err:
        stdout.print(f"Not validated: {err}")
        return
    from planner.report.terminal import print_validation

    print_validation(stdout, run, prof, checks, VALIDATE_TOLERANCE)


def _lock_run_folder(out: Path) -> Path:
    """One live run per folder: a second `flmplan run` into the same --out is refused (a lock
    left by a run that died is taken over)."""
    from planner.errors import FlmplanError

    lock = out / "RUNNING.lock"
    try:
        pid = int(lock.read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        pass                                   # no lock, or its run is gone
    else:
        raise FlmplanError(f"Another flmplan run (process {pid}) is writing to {out}; wait for it to finish "
                           "or choose another --out.")
    lock.write_text(f"{os.getpid()}\n")
    return lock


def _die_with_parent() -> None:
    """In torchrun's process, before it starts: on Linux, a SIGTERM to it when this command dies (even by
    SIGKILL), so that a run in its own session is never left behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _copy_until(stream, stopping: list[int]) -> None:
    """torchrun's stderr (the workers' and its own) onto this command's, until the run is stopping."""
    for line in iter(stream.readline, b""):
        if not stopping:
            sys.stderr.buffer.write(line)
            sys.stderr.buffer.flush()


def _launch(raw: dict, out: Path, nproc: int, max_restarts: int, data, dtype, compile, from_scratch,
            log_every: int, pin_cores: bool) -> None:
    import subprocess
    import threading

    from planner.errors import FlmplanError
    from runtime.training.trainer import ERROR_FILE, PREEMPTED_EXIT

    (out / ERROR_FILE).unlink(missing_ok=True)
    run_plan = out / "plan.json"
    run_plan.write_text(json.dumps(raw, indent=1))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           f"--max-restarts={max_restarts}", "-m", "runtime.train", "--plan", str(run_plan), "--out", str(out),
           "--log-every", str(log_every)]
    if data:
        cmd += ["--data", *map(str, data)]
    if dtype:
        cmd += ["--dtype", dtype]
    if compile is not None:
        cmd += ["--compile" if compile else "--no-compile"]
    if from_scratch:
        cmd += ["--from-scratch"]
    if not pin_cores:
        cmd += ["--no-pin-cores"]
    env = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "OMP_NUM_THREADS": "1",
           "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    stdout.print(f"[bold]{raw['name']}[/]: {len(raw['stages'])} stages on {nproc} processes → {out}")
    # torchrun runs in its own session, so a terminal's Ctrl-C reaches only this command, which stops
    # the run the one way a scheduler does: SIGTERM to torchrun, which passes it to every worker; they
    # finish the step in flight, save, and exit. Once stopping, torchrun's own shutdown noise (its
    # SignalException traceback, its warnings) is left out; this command says what happened.
    child = subprocess.Popen(cmd, env=env, start_new_session=True, stderr=subprocess.PIPE,
                             preexec_fn=_die_with_parent)
    received: list[int] = []
    pump = threading.Thread(target=_copy_until, args=(child.stderr, received), daemon=True)
    pump.start()

    def forward(signum, frame) -> None:
        if not received:
            child.send_signal(signal.SIGTERM)
        received.append(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        pump.join(timeout=5)
    if received:
        stdout.print(f"Stopped by {signal.Signals(received[0]).name}: the step in flight was saved; start the same "
                     f"command again to resume from {out / 'checkpoints'}.")
        raise typer.Exit(PREEMPTED_EXIT)
    error = out / ERROR_FILE
    if error.exists():
        raise FlmplanError(error.read_text().strip())
    if code != 0 or not (out / "DONE.json").exists():
        raise FlmplanError(f"The run stopped (exit code {code}) before finishing; start the same command again "
                           f"to resume from the newest good checkpoint in {out / 'checkpoints'}.")

