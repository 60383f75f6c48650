"""Shared fixtures: the FLM-101B shapes and a ready A800 cluster."""

import pytest

from planner.model.specs import ClusterSpec, Layout, ModelSpec, get_gpu


@pytest.fixture
def flm101b() -> ModelSpec:
    from planner.growth.flm import flm_base

    return flm_base()


@pytest.fixture
def gpt_small() -> ModelSpec:
    return ModelSpec(layers=24, hidden=2048, heads=16, ffn=8192, vocab=50304, seq=2048)


@pytest.fixture
def a800_192() -> ClusterSpec:
    return ClusterSpec(gpu=get_gpu("a800-80gb"), gpus=192, gpus_per_node=8)


@pytest.fixture
def flm_layout() -> Layout:
    return Layout(tp=4, pp=4, dp=12, micro_batch=1, global_batch=2160, recompute="selective",
                  sequence_parallel=True, zero=1)


@pytest.fixture(scope="session")
def process_group(tmp_path_factory):
    """A one-process gloo group, for the runtime's pieces that need one (DCP, DeviceMesh)."""
    import torch.distributed as dist

    store = tmp_path_factory.mktemp("pg") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture
def grow_from_checkpoint(process_group, tmp_path):
    """The runtime's growth path as a function: save `old` (and its optimizer) with DCP, build `cfg` on
    the meta device on one process, grow it from the checkpoint; returns (grown chunk, its optimizer)."""
    import torch

    from runtime import checkpoint
    from runtime.growth.msg import grow_sharded
    from runtime.model.decoder import Decoder
    from runtime.parallel.optim import make_optimizer
    from runtime.parallel.parallelize import make_mesh, parallelize

    def grow(old, opt, cfg):
        checkpoint.save(tmp_path, "old", [old], [opt], {"global_step": 1})
        with torch.device("meta"):
            new = Decoder(cfg)
        layout = Layout(tp=1, pp=1, dp=1, micro_batch=2, global_batch=2)
        pm = parallelize(new, layout, make_mesh(layout, "cpu"), torch.device("cpu"), seed=5)
        opts = [make_optimizer(c, 1e-3) for c in pm.chunks]
        grow_sharded(pm.chunks, opts, tmp_path / "old", old.cfg, grow_steps=4)
        return pm.chunks[0], opts[0]

    return grow


# Two plans that several test modules export, read and check: made once per session.
@pytest.fixture(scope="session")
def flm_plan(tmp_path_factory):
    from typer.testing import CliRunner

    from flmplan.cli import app
    from planner.plan.plan_file import load_plan

    runner = CliRunner()
    out = tmp_path_factory.mktemp("flm") / "plan.json"
    args = ["simulate", "--budget", "100000", "--schedule", "flm", "--out", str(out), "--trials", "300"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    return load_plan(out)


@pytest.fixture(scope="session")
def auto_plan(tmp_path_factory):
    from typer.testing import CliRunner

    from flmplan.cli import app
    from planner.plan.plan_file import load_plan

    runner = CliRunner()
    out = tmp_path_factory.mktemp("auto") / "plan.json"
    r = runner.invoke(app, ["simulate", "--budget", "100000", "--out", str(out), "--trials", "200"])
    assert r.exit_code == 0, r.output
    return load_plan(out)
