"""Shared fixtures: the FLM-101B shapes and a ready A800 cluster."""

import pytest

from planner.specs import ClusterSpec, Layout, ModelSpec, get_gpu


@pytest.fixture
def flm101b() -> ModelSpec:
    from planner.schedule import flm_base

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
