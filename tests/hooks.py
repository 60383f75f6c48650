"""Hooks the tests install in long loops (runtime/hooks.py): each kills the process at a point, as a
crashed node or a killed job would."""

import os


def kill_at(run, k: int, step: int) -> None:
    """Die (SIGKILL, as a crashed node would) at each `stage:step` of FLMPLAN_KILL_AT (stage counted
    from 0), once per point: a marker in the run folder says it has died there."""
    here = f"{k}:{step}"
    marker = run.out / f"KILLED-{here.replace(':', '-')}"
    if here in os.environ.get("FLMPLAN_KILL_AT", "").split(",") and run.rank == 0 and not marker.exists():
        marker.write_text("")
        os.kill(os.getpid(), 9)


def kill_prepare_at(recorded: int) -> None:
    """Die (SIGKILL) when `flmplan data prepare` has recorded FLMPLAN_PREPARE_KILL_AT batches' progress."""
    if os.environ.get("FLMPLAN_PREPARE_KILL_AT") == str(recorded):
        os.kill(os.getpid(), 9)


def stop_prepare_at(recorded: int) -> None:
    """Send itself SIGTERM (a scheduler's stop) when `flmplan data prepare` has recorded
    FLMPLAN_PREPARE_STOP_AT batches' progress."""
    import signal

    if os.environ.get("FLMPLAN_PREPARE_STOP_AT") == str(recorded):
        os.kill(os.getpid(), signal.SIGTERM)
