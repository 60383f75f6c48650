"""`flmplan grow --to torchtitan`: a grown stage's first weights, written from the previous stage's
torchtitan checkpoint in torchtitan's own layout, load through torchtitan's CheckpointManager into the
exported stage's model with the expected parameter count, and compute the previous stage's loss."""

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from flmplan.cli import app

runner = CliRunner()
# Function-preserving up to RMSNorm's ε (added to the mean square before and after the growth alike, where
# the mean square itself shrinks by d_old/d_new) and fp32 rounding; the bound is 1e-4.
LOSS_TOLERANCE = 1e-4


def test_grown_torchtitan_checkpoints_load_in_torchtitan_and_keep_the_loss(tmp_path, monkeypatch):
    pytest.importorskip("torchtitan.config.manager", reason="torchtitan is in the test extra")
    try:
        import torchtitan.models.llama3  # noqa: F401
    except ImportError as err:
        pytest.skip(f"torchtitan's model code does not load under torch {torch.__version__}: {err}")
    import torch.distributed.checkpoint as dcp
    from torch.nn.attention.flex_attention import create_block_mask
    from torchtitan.components.checkpoint import CheckpointManager, ModelWrapper

    from planner.export.torchtitan import TORCHTITAN_MODULE
    from runtime.model.scale import tiny_plan

    # FLM-101B's schedule at CPU size: stage 2 grows the width (64 → 128, heads 4 → 8, MLP), stage 3 the depth.
    raw = tiny_plan(json.loads((__import__("pathlib").Path(__file__).parents[1] / "examples/plans/flm101b_plan.json")
                               .read_text()), nproc=1)
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(raw))
    r = runner.invoke(app, ["export", str(plan_path), "--to", "torchtitan", "--nearest", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "flmplan grow" in (tmp_path / f"{TORCHTITAN_MODULE}.py").read_text()
    monkeypatch.chdir(tmp_path)                  # the exported initial_load_path is outputs/checkpoint/stageK-grown
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(TORCHTITAN_MODULE, None)
    module = __import__(TORCHTITAN_MODULE)

    batch = torch.randint(0, 256, (2, 65), generator=torch.Generator().manual_seed(0))
    mask = create_block_mask(lambda b, h, q, kv: q >= kv, None, None, 64, 64, device="cpu")

    def loss(model) -> float:
        with torch.no_grad():      # flex attention has no backward on a CPU; the loss is all the test needs
            logits = model(batch[:, :-1], attention_masks=mask)
        return float(torch.nn.functional.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1)))

    torch.manual_seed(0)
    previous = module.stage1().model_spec.model.build()
    previous.init_weights()
    saved = tmp_path / "outputs" / "checkpoint" / "step-40"
    dcp.save(ModelWrapper([previous]).state_dict(), checkpoint_id=str(saved))   # torchtitan's model-only layout
    for stage in (2, 3):
        cfg = getattr(module, f"stage{stage}")()
        grown = tmp_path / "outputs" / "checkpoint" / f"stage{stage}-grown"
        r = runner.invoke(app, ["grow", str(saved), "--plan", str(plan_path), "--stage", str(stage), "--to",
                                "torchtitan", "--out", str(grown)])
        assert r.exit_code == 0, r.output
        assert cfg.checkpoint.initial_load_path == str(grown)
        model = cfg.model_spec.model.build()
        manager = CheckpointManager(
            CheckpointManager.Config(enable=True, folder=str(tmp_path / f"run{stage}"),
                                     initial_load_path=cfg.checkpoint.initial_load_path,
                                     initial_load_model_only=True),
            dataloader=None, model_parts=[model], optimizers=None, lr_schedulers=None, states={}, sd_adapter=None)
        assert manager.load()                     # torchtitan's own loader, as its trainer calls it
        expected = sum(p.numel() for p in model.parameters())
        assert f"{expected:,} parameters" in r.output
        assert loss(model) == pytest.approx(loss(previous), abs=LOSS_TOLERANCE)
        previous, saved = model, tmp_path / "outputs" / "checkpoint" / f"step-{stage}"
        dcp.save(ModelWrapper([previous]).state_dict(), checkpoint_id=str(saved))

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    for args, words in ((["--stage", "1"], "must be a grown stage"),
                        (["--stage", "2", "--out", str(tmp_path / "notes")], "already holds files"),
                        (["--stage", "2", "--to", "deepspeed"], "--to deepspeed is not one"),
                        (["--stage", "3"], "is not this plan's previous stage in torchtitan's layout")):
        r = runner.invoke(app, ["grow", str(tmp_path / "outputs" / "checkpoint" / "step-40"), "--plan",
                                str(plan_path), "--out", str(tmp_path / "bad"), *args])
        assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output, (args, r.output)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"



@pytest.mark.parametrize("variant", ["flm", "gqa-swiglu-untied-learned"])
def test_grown_megatron_checkpoints_load_in_megatron_core_and_keep_the_loss(tmp_path, monkeypatch, process_group,
                                                                            variant):
    """Stage 1 is written by megatron-core's own saver; `flmplan grow --to megatron` grows it a box at a
    time; megatron-core's loader (what Megatron-LM's --pretrained-checkpoint calls) reads the grown
    checkpoint with every key accounted for both ways, and the grown GPT computes the old one's loss."""
    pytest.importorskip("megatron.core", reason="megatron-core is in the test extra")
    from pathlib import Path

    from torch.distributed.checkpoint import FileSystemReader

    from runtime.growth import targets as grow_targets
    from runtime.model.scale import tiny_plan

    monkeypatch.setattr(grow_targets, "BOX_ELEMENTS", 64 * 128)    # embeddings in several boxes, as at scale

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from grow_megatron import load_megatron, megatron_gpt, megatron_on_cpu, save_megatron

    raw = tiny_plan(json.loads((Path(__file__).parents[1] / "examples/plans/flm101b_plan.json").read_text()), nproc=1)
    if variant != "flm":
        for st in raw["stages"]:
            st["model"] |= {"activation": "swiglu", "kv_heads": st["model"]["heads"] // 2, "tied_embeddings": False,
                            "position": "learned"}
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(raw))
    r = runner.invoke(app, ["export", str(plan_path), "--to", "megatron", "--nearest", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    vocab = raw["stages"][0]["model"]["vocab"]
    batch = torch.randint(0, vocab, (2, 33), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(32).expand(2, -1)
    causal = torch.triu(torch.ones(32, 32), diagonal=1).bool()[None, None]      # True: masked

    def loss(model) -> float:
        with torch.no_grad():
            return float(model(batch[:, :-1], positions, causal, labels=batch[:, 1:]).mean())

    checkpoints = tmp_path / "checkpoints"
    with megatron_on_cpu():
        torch.manual_seed(0)
        previous = megatron_gpt(tmp_path / "stage1.megatron.args", vocab)
        with torch.no_grad():      # far from init, as a trained stage is: residual streams with a mean
            for p in previous.parameters():
                p.add_(torch.randn(p.shape) * 0.2 + 0.05)
        save_megatron(previous, checkpoints / "stage1", 40)
        for stage in (2, 3):
            grown = checkpoints / f"stage{stage}-grown"
            args_file = tmp_path / f"stage{stage}.megatron.args"
            # The export names the command this test runs, from the folder Megatron-LM saved the last stage in.
            assert f"--pretrained-checkpoint checkpoints/stage{stage}-grown" in args_file.read_text()
            assert (f"flmplan grow checkpoints/stage{stage - 1} --plan PLAN --stage {stage} --to megatron --out "
                    f"checkpoints/stage{stage}-grown") in args_file.read_text()
            r = runner.invoke(app, ["grow", str(checkpoints / f"stage{stage - 1}"), "--plan", str(plan_path),
                                    "--stage", str(stage), "--to", "megatron", "--out", str(grown)])
            assert r.exit_code == 0, r.output
            model = megatron_gpt(args_file, vocab)
            load_megatron(model, grown)
            expected = sum(p.numel() for p in model.parameters())
            assert f"{expected:,} parameters" in r.output
            assert loss(model) == pytest.approx(loss(previous), abs=LOSS_TOLERANCE)
            saved = FileSystemReader(str(grown / "release")).read_metadata().state_dict_metadata
            assert len(saved["embedding.word_embeddings.weight"].chunks) == vocab // 64
            assert len(saved["decoder.layers.mlp.linear_fc1.weight"].chunks) == model.config.num_layers
            previous = model
            save_megatron(previous, checkpoints / f"stage{stage}", 100 * stage)

    bad = tmp_path / "bad"
    (tmp_path / "plain").mkdir()
    cases = ((checkpoints / "stage1" / "iter_0000040" / "common.pt", 2, "is not a checkpoint folder"),
             (tmp_path / "plain", 2, "not a Megatron-LM checkpoint in torch_dist format"),
             (checkpoints / "stage1", 3, "is not this plan's previous stage in Megatron-LM's layout"))
    for source, stage, words in cases:
        r = runner.invoke(app, ["grow", str(source), "--plan", str(plan_path), "--stage", str(stage), "--to",
                                "megatron", "--out", str(bad)])
        assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output, (source, r.output)
    assert not bad.exists()
