"""Runtime pieces that need no process group: checkpoint verification, tiny scaling (the data path is
tests/test_data.py)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from planner.plan.plan_file import plan_from_dict
from runtime.checkpoint import checkpoints, verify
from runtime.model.scale import tiny_plan
from runtime.training.lr_schedule import lr_at


def test_checkpoint_verification_names_the_problem(tmp_path):
    good = tmp_path / "stage0-step0000010"
    good.mkdir()
    (good / "__0_0.distcp").write_bytes(b"abc")
    import hashlib

    digest = hashlib.sha256(b"abc").hexdigest()
    head = {"stage": 0, "step": 10, "data_position": 160}
    (good / "manifest.json").write_text(json.dumps({**head, "global_step": 10, "files": {"__0_0.distcp": digest}}))
    assert verify(good) is None
    bad = tmp_path / "stage0-step0000020"
    bad.mkdir()
    (bad / "__0_0.distcp").write_bytes(b"ab")
    (bad / "manifest.json").write_text(json.dumps({**head, "global_step": 20, "files": {"__0_0.distcp": digest}}))
    assert "does not match its checksum" in verify(bad)
    unfinished = tmp_path / "stage0-step0000030.tmp"
    unfinished.mkdir()
    assert checkpoints(tmp_path) == [bad, good]
    (tmp_path / "x").mkdir()
    assert "no manifest" in verify(tmp_path / "x")


def test_tiny_scale_keeps_the_growth_steps():
    plan = json.loads((Path(__file__).resolve().parents[1] / "examples/plans/flm101b_plan.json").read_text())
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

    from flmplan.cli import app

    runner = CliRunner()
    plan = str(Path(__file__).resolve().parents[1] / "examples/plans/flm101b_plan.json")
    r = runner.invoke(app, ["run", plan, "--nproc", "4"])
    assert r.exit_code == 2 and "needs tp·pp·dp = 2·1·96 = 192 processes but --nproc is 4" in r.output


def test_every_kind_of_broken_manifest_is_a_bad_checkpoint(tmp_path):
    """Binary garbage, a JSON list, {} or a manifest without its files: named, never a crash."""
    cases = {"garbage": (b"\xff\xfe\x00garbage", "not valid JSON"), "list": (b"[1, 2]", "not a JSON object"),
             "empty": (b"{}", "lacks stage, step, data_position, global_step, files"),
             "nofiles": (json.dumps({"stage": 0, "step": 5, "data_position": 1, "global_step": 5,
                                     "files": {}}).encode(), "lists no files")}
    for name, (content, words) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "manifest.json").write_bytes(content)
        assert words in verify(folder), name
    assert sorted(checkpoints(tmp_path)) == sorted(tmp_path / n for n in cases)


def test_no_usable_checkpoint_stops_the_run_instead_of_starting_over(process_group, tmp_path):
    import pytest

    from planner.errors import FlmplanError
    from runtime.checkpoint import latest_good

    for name in ("stage0-step0000005", "stage0-step0000010"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text("{}")
    said: list[str] = []
    with pytest.raises(FlmplanError, match="None of the 2 checkpoints .* is usable.*--from-scratch"):
        latest_good(tmp_path, log=said.append)
    assert len(said) == 2 and all("is unusable" in s for s in said)
    assert latest_good(tmp_path, log=said.append, from_scratch=True) is None
    assert latest_good(tmp_path / "none-yet", log=said.append) is None       # a new run


def test_tiny_scale_never_drops_a_sequence_and_is_a_valid_plan_on_any_process_count():
    from planner.plan.plan_file import plan_from_dict

    plan = json.loads((Path(__file__).resolve().parents[1] / "examples/plans/flm101b_plan.json").read_text())
    for nproc in range(1, 9):
        tiny = tiny_plan(plan, nproc=nproc, steps=4)
        plan_from_dict(tiny)          # e.g. sequence parallelism dropped where tp falls to 1
        for s in tiny["stages"]:
            lay = s["layout"]
            assert lay["global_batch"] % (lay["micro_batch"] * lay["dp"]) == 0, (nproc, lay)


def _run_cli(args: list[str]):
    from typer.testing import CliRunner

    from flmplan.cli import app

    return CliRunner().invoke(app, ["run", *args])


def test_run_checks_data_plan_and_folder_before_any_process_starts(tmp_path):
    """Each refused in one sentence, exit 2, nothing launched (no run folder made)."""
    import os


    root = Path(__file__).resolve().parents[1]
    plan_path = str(root / "examples/plans/tiny_one_stage.json")
    plan = json.loads(Path(plan_path).read_text())
    (tmp_path / "empty").mkdir()
    (tmp_path / "noise.txt").write_bytes(bytes(range(128, 256)) * 100)
    np.array([1, 2, 300] * 100, dtype=np.uint16).tofile(tmp_path / "ids.bin")
    (tmp_path / "afile").write_text("x")
    shrink = json.loads(json.dumps(plan))
    grown = json.loads(json.dumps(plan["stages"][0]))
    grown["model"]["hidden"], grown["model"]["heads"] = 32, 2
    grown["growth"] = {"from_stage": 0, "dims": {"hidden": [64, 32]}, "grow_steps": 2}
    shrink["stages"].append(grown)
    (tmp_path / "shrink.json").write_text(json.dumps(shrink))
    dropping = json.loads(json.dumps(plan))
    dropping["stages"][0]["layout"].update(micro_batch=3)
    (tmp_path / "drop.json").write_text(json.dumps(dropping))
    out = str(tmp_path / "run")
    cases = [
        ([plan_path, "--nproc", "1", "--data", str(tmp_path / "missing"), "--out", out], "does not exist"),
        ([plan_path, "--nproc", "1", "--data", str(tmp_path / "empty"), "--out", out], "a folder with no files"),
        ([plan_path, "--nproc", "1", "--data", str(tmp_path / "noise.txt"), "--out", out], "is not UTF-8 text"),
        ([plan_path, "--nproc", "1", "--data", str(tmp_path / "ids.bin"), "--out", out],
         "has no ids.idx"),
        ([str(tmp_path / "shrink.json"), "--nproc", "1", "--out", out],
         "cannot be grown from stage 1: hidden shrinks (64 → 32)"),
        ([str(tmp_path / "drop.json"), "--nproc", "1", "--out", out], "would never be trained"),
        ([plan_path, "--nproc", "1", "--out", str(tmp_path / "afile")], "is a file"),
    ]
    for args, words in cases:
        r = _run_cli(args)
        assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output, (words, r.output)
    assert not (tmp_path / "run").exists()
    # A second run into a folder a live run holds is refused (this process plays the live run).
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "RUNNING.lock").write_text(f"{os.getpid()}\n")
    r = _run_cli([plan_path, "--nproc", "1", "--out", str(busy)])
    assert r.exit_code == 2 and "Another flmplan run" in r.output and not (busy / "plan.json").exists()


def test_tiny_scale_keeps_grouped_query_attention():
    """A GQA plan maps onto this machine with the same query heads per key/value head, and an even
    number of key/value heads for tp = 2."""
    plan = json.loads((Path(__file__).resolve().parents[1] / "examples/plans/flm101b_plan.json").read_text())
    for st in plan["stages"]:
        st["model"]["kv_heads"] = st["model"]["heads"] // 4 if st["model"]["heads"] % 4 == 0 else None
    plan["stages"][0]["model"]["kv_heads"] = 11          # 44 heads: 4 per key/value head
    tiny = plan_from_dict(tiny_plan(plan, 4), origin="tiny GQA plan")
    for st in tiny.stages:
        assert st.model.kv_heads is not None and st.model.heads == 4 * st.model.kv_heads
        assert st.model.kv_heads % 2 == 0


def test_a_finished_run_is_recognised_and_not_started_again(tmp_path):
    """`flmplan run` on a folder whose DONE.json names this plan says so and starts nothing."""
    from typer.testing import CliRunner

    from flmplan.cli import app
    from planner.plan.plan_file import load_plan, plan_fingerprint

    plan_path = Path(__file__).resolve().parents[1] / "examples/plans/tiny_one_stage.json"
    out = tmp_path / "run"
    out.mkdir()
    done = {"stages": 1, "plan_fingerprint": plan_fingerprint(load_plan(plan_path))}
    (out / "DONE.json").write_text(json.dumps(done))
    r = CliRunner().invoke(app, ["run", str(plan_path), "--nproc", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "Run complete: 1 stage in" in text and "nothing to do" in text
    assert not (out / "metrics.jsonl").exists()


def test_checkpoint_stage_numbering_reads_old_and_new_manifests():
    """Manifests number growth stages from 1 like the console; older ones counted from 0."""
    from runtime.checkpoint import stage_index

    assert stage_index({"stage": 2, "stage_numbering": 1}) == 1
    assert stage_index({"stage": 1}) == 1


def test_cpu_ranks_are_pinned_to_their_own_share_of_the_cores():
    from runtime.parallel.cores import _physical_core, pin_to_own_cores, usable_cores

    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this platform")
    mask, threads = os.sched_getaffinity(0), torch.get_num_threads()
    allowed = sorted(mask, key=_physical_core)      # a core's hyperthreads side by side
    try:
        assert pin_to_own_cores(0, 1) is None and os.sched_getaffinity(0) == mask
        # Two ranks: the second takes the second half, a thread per core of it; more ranks than
        # cores wrap round them.
        per = max(1, len(allowed) // 2)
        second = pin_to_own_cores(1, 2)
        assert second == (allowed[per:2 * per] if len(allowed) > 1 else allowed)
        assert os.sched_getaffinity(0) == set(second) and torch.get_num_threads() == len(second)
        # What a run records as its cores is what its process may use, not what the machine has.
        assert usable_cores() == len(second)
        os.sched_setaffinity(0, mask)
        assert pin_to_own_cores(3, 4 * len(allowed)) == [allowed[3 % len(allowed)]]
    finally:
        os.sched_setaffinity(0, mask)
        torch.set_num_threads(threads)


def test_pipeline_chunks_with_the_ends_counted_run_the_whole_model():
    """With the embedding and the output layer counted as a layer each (Layout.ends_in_split), six
    blocks over four chunks are 1, 2, 2, 1 (the cost model's planner/model/specs.py chunk_layers), and the
    chunks run one after another compute what the whole model does."""
    from runtime.model.decoder import Decoder, DecoderConfig
    from runtime.parallel.parallelize import split_for_pipeline

    torch.manual_seed(0)
    full = Decoder(DecoderConfig(layers=6, hidden=32, heads=2, ffn=64, vocab=64, seq=16, tied_embeddings=False))
    chunks = split_for_pipeline(full, [0, 1, 2, 3], 4, ends_in_split=True)
    assert [len(c.blocks) for c in chunks] == [1, 2, 2, 1]
    tokens = torch.randint(0, 64, (2, 16))
    x = tokens
    for c in chunks:
        x = c(x)
    torch.testing.assert_close(x, full(tokens))
