"""Runtime pieces that need no process group: data sampler, checkpoint verification, tiny scaling."""

import json
from pathlib import Path

import numpy as np
import torch

from planner.plan import plan_from_dict
from runtime.checkpoint import checkpoints, verify
from runtime.data import Sampler, load_tokens
from runtime.scale import tiny_plan
from runtime.train import lr_at


def test_default_data_is_real_text():
    tokens, what = load_tokens(None)
    assert "standard library" in what and len(tokens) > 1_000_000
    text = bytes(tokens[:2000].astype(np.uint8)).decode("utf-8", errors="replace")
    assert "import" in text or "def " in text


def test_sampler_is_deterministic_and_resumable():
    tokens = np.arange(10_000) % 256
    a = Sampler(tokens, seq=16, seed=3)
    first = [a.batch(8, 0, 1) for _ in range(5)]
    b = Sampler(tokens, seq=16, seed=3, position=3 * 8)
    assert torch.equal(b.batch(8, 0, 1)[0], first[3][0])
    # Data-parallel ranks split the same global batch.
    c = Sampler(tokens, seq=16, seed=3)
    x0, _ = c.batch(8, 0, 2)
    c.position = 0
    x1, _ = c.batch(8, 1, 2)
    assert torch.equal(torch.cat([x0, x1]), first[0][0])
    x, y = first[0]
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_checkpoint_verification_names_the_problem(tmp_path):
    good = tmp_path / "stage0-step0000010"
    good.mkdir()
    (good / "__0_0.distcp").write_bytes(b"abc")
    import hashlib

    digest = hashlib.sha256(b"abc").hexdigest()
    (good / "manifest.json").write_text(json.dumps({"global_step": 10, "files": {"__0_0.distcp": digest}}))
    assert verify(good) is None
    bad = tmp_path / "stage0-step0000020"
    bad.mkdir()
    (bad / "__0_0.distcp").write_bytes(b"ab")
    (bad / "manifest.json").write_text(json.dumps({"global_step": 20, "files": {"__0_0.distcp": digest}}))
    assert "does not match its checksum" in verify(bad)
    unfinished = tmp_path / "stage0-step0000030.tmp"
    unfinished.mkdir()
    assert checkpoints(tmp_path) == [bad, good]
    (tmp_path / "x").mkdir()
    assert "no manifest" in verify(tmp_path / "x")


def test_tiny_scale_keeps_the_growth_steps():
    plan = json.loads((Path(__file__).resolve().parents[1] / "runtime/data/flm101b_plan.json").read_text())
    tiny = tiny_plan(plan, nproc=4, steps=10)
    plan_from_dict(tiny)
    dims = [set(s["growth"]["dims"]) for s in tiny["stages"][1:]]
    assert "hidden" in dims[0] and "layers" not in dims[0]       # 16B → 51B: width
    assert dims[1] == {"layers"}                                 # 51B → 101B: depth
    for s in tiny["stages"]:
        lay = s["layout"]
        assert lay["tp"] * lay["pp"] * lay["dp"] == 4


def test_learning_rate_rewarms():
    assert lr_at(0, 100, 1.0, 10) == 0.1
    assert lr_at(9, 100, 1.0, 10) == 1.0
    assert abs(lr_at(100, 100, 1.0, 10) - 0.1) < 1e-9


def test_run_refuses_a_plan_that_needs_other_hardware():
    from typer.testing import CliRunner

    from planner.cli import app

    runner = CliRunner()
    plan = str(Path(__file__).resolve().parents[1] / "runtime/data/flm101b_plan.json")
    r = runner.invoke(app, ["run", plan, "--nproc", "4"])
    assert r.exit_code == 2 and "needs tp·pp·dp = 2·1·96 = 192 processes but --nproc is 4" in r.output
    r = runner.invoke(app, ["run", plan, "--scale", "huge"])
    assert r.exit_code == 2 and "--scale must be tiny or full" in r.output
