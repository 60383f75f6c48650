"""The exports: Megatron-LM arguments parsed by its own parser, torchtitan configs loaded by its
ConfigManager, SLURM scripts run under stub srun/scontrol; what a tool cannot express refused in one
sentence or, with --nearest, replaced and said."""


import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli_simulate import assert_one_sentence
from typer.testing import CliRunner

from flmplan.cli import app
from planner.export.stage_facts import checkpoint_every_steps
from planner.plan.plan_file import load_plan, plan_from_dict, stage_warmup_steps

runner = CliRunner()


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
    r = runner.invoke(app, ["export", str(path), "--to", "slurm", "--out-dir", str(tmp_path / "s")])
    script = (tmp_path / "s" / "flmplan.sbatch").read_text()
    # 24 working nodes and the simulation's one spare; data required; checkpoints at the
    # simulation's interval in the slowest stage's steps.
    spares = flm_plan.simulation["spare_nodes"]
    assert f"#SBATCH --nodes={24 + spares}" in script and "needed=24" in script and 'srun --nodes="$needed"' in script
    assert '"${data_args[@]}"' in script and ': "${DATA:?' in script      # the plan names no corpus
    # Each stage checkpoints at the simulation's interval in its own steps.
    interval = flm_plan.simulation["checkpoint_interval_min"] * 60
    every = ",".join(str(max(1, round(interval / st.predicted.step_s))) for st in flm_plan.stages)
    assert f"--checkpoint-every {every}" in script and "--rdzv-backend=c10d" in script
    subprocess.run(["bash", "-n", str(tmp_path / "s" / "flmplan.sbatch")], check=True)


def test_slurm_script_quotes_paths_checkpoints_per_stage_and_requeues_before_its_limit(tmp_path, flm_plan):
    """A plan path with a space survives (quoted; bash parses the script); the time limit is the user's,
    with SLURM's signal five minutes before it and a requeue; whole nodes; shellcheck clean where it is
    installed. The runtime takes one checkpoint interval per stage."""
    import shutil

    from runtime.training.trainer import checkpoint_interval

    folder = tmp_path / "my plans"
    folder.mkdir()
    path = folder / "p.json"
    path.write_text(json.dumps(flm_plan.to_json()))
    r = runner.invoke(app, ["export", str(path), "--to", "slurm", "--out", str(tmp_path / "s"), "--time",
                            "1-12:00:00"])
    assert r.exit_code == 0, r.output
    script = (tmp_path / "s" / "flmplan.sbatch").read_text()
    assert f"--plan '{path}'" in script
    for line in ("#SBATCH --time=1-12:00:00", "#SBATCH --signal=B:TERM@300", "#SBATCH --requeue",
                 "#SBATCH --exclusive", 'scontrol requeue "$SLURM_JOB_ID"', "trap requeue TERM"):
        assert line in script, line
    subprocess.run(["bash", "-n", str(tmp_path / "s" / "flmplan.sbatch")], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", str(tmp_path / "s" / "flmplan.sbatch")], check=True)
    every = script.split("--checkpoint-every ")[1].split()[0]
    assert [checkpoint_interval(every, k) for k in range(3)] == [int(v) for v in every.split(",")]
    r = runner.invoke(app, ["export", str(path), "--to", "slurm", "--out", str(tmp_path / "s"), "--time", "48h"])
    assert_one_sentence(r, "is not a SLURM time limit")


STUB_SCONTROL = r"""#!/bin/bash
# scontrol as the script uses it: the job's hostnames, each node's state (DOWN once in $STUBS/down), requeue.
case "$1 $2" in
  "show hostnames") for i in $(seq 1 "$STUB_NODES"); do echo "node$i"; done ;;
  "show node") if grep -qx "$3" "$STUBS/down" 2>/dev/null; then echo "NodeName=$3 State=DOWN+NOT_RESPONDING";
               else echo "NodeName=$3 State=ALLOCATED"; fi ;;
  *) echo "scontrol $*" >> "$STUBS/requeued" ;;
esac
"""


# srun: records each launch; the first one loses node2 (marked down, exit 1 as a killed step), the next succeeds.
STUB_SRUN = r"""#!/bin/bash
echo "$*" >> "$STUBS/launches"
if [[ $(wc -l < "$STUBS/launches") -eq 1 ]]; then echo node2 > "$STUBS/down"; exit 1; fi
exit 0
"""


def test_slurm_replaces_a_failed_node_with_the_spare_and_resumes(tmp_path, auto_plan):
    """The script under stub srun/scontrol: a node fails during the first launch; the job (not killed,
    --no-kill) starts the training step again on the healthy nodes, the spare in the failed node's place,
    with the same run folder (the runtime resumes from its newest checkpoint there), and ends well."""
    raw = auto_plan.to_json()
    raw["simulation"] = {**(raw.get("simulation") or {}), "spare_nodes": 1}
    plan = plan_from_dict(raw)
    needed = max(1, plan.cluster.gpus // plan.cluster.gpus_per_node)
    from planner.export.slurm import slurm_script

    script = tmp_path / "flmplan.sbatch"
    script.write_text(slurm_script(plan, str(tmp_path / "my plans" / "p.json")))
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, text in (("scontrol", STUB_SCONTROL), ("srun", STUB_SRUN)):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "STUBS": str(stubs), "SLURM_JOB_ID": "7",
           "SLURM_JOB_NODELIST": f"node[1-{needed + 1}]", "STUB_NODES": str(needed + 1), "DATA": "corpus/en",
           "FLMPLAN_RESTART_WAIT": "0"}
    r = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    first, second = (stubs / "launches").read_text().splitlines()
    nodes = [f"node{i}" for i in range(1, needed + 2)]
    assert f"--nodelist={','.join(nodes[:needed])}" in first
    assert f"--nodelist={','.join(n for n in nodes if n != 'node2')}" in second
    out = first.split("--out ")[1].split()[0]
    assert out == second.split("--out ")[1].split()[0]          # the same run folder: the runtime resumes
    assert f"--plan '{tmp_path / 'my plans' / 'p.json'}'" in script.read_text()
    assert "restarting on the healthy nodes (restart 1 of 1)" in r.stderr
    assert not (stubs / "requeued").exists()


def test_freelm_exports_language_alone_only_when_asked_and_slurm_passes_its_teacher_data(tmp_path, flm_plan):
    """Neither tool has FreeLM's teacher signal: refused naming the field; with --nearest, the language steps
    alone (the plan's language tokens, no more), said in each stage's file. SLURM passes --teacher-data,
    which runtime.train takes. Stages after the first say that the tool restarts the data stream."""
    raw = flm_plan.to_json()
    for st in raw["stages"]:
        st["objective"] = {"kind": "freelm", "teacher_every": 4}
    plan = plan_from_dict(raw)
    path = tmp_path / "freelm.json"
    path.write_text(json.dumps(raw))
    for to in ("megatron", "torchtitan"):
        r = runner.invoke(app, ["export", str(path), "--to", to, "--out", str(tmp_path / to)])
        assert_one_sentence(r, "FreeLM's teacher signal every 4 steps (objective.kind)")
        assert not (tmp_path / to).exists()
    r = runner.invoke(app, ["export", str(path), "--to", "megatron", "--nearest", "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    seeds = set()
    for k, st in enumerate(plan.stages):
        text = (tmp_path / "m" / f"stage{k + 1}.megatron.args").read_text()
        args = parse_megatron(text)
        language = st.steps - st.steps // 4
        assert int(args.train_iters) == int(args.lr_decay_iters) == language
        assert language * st.layout.global_batch * st.model.seq == pytest.approx(
            st.steps * st.layout.global_batch * st.model.seq * 0.75, rel=1e-3)
        assert "teacher steps (every 4th) are left out" in text
        assert ("starts this stage's data stream afresh" in text) == (k > 0)
        seeds.add(args.seed)
    assert len(seeds) == len(plan.stages)          # each stage shuffles the corpus anew
    r = runner.invoke(app, ["export", str(path), "--to", "slurm", "--out", str(tmp_path / "s")])
    script = (tmp_path / "s" / "flmplan.sbatch").read_text()
    assert ': "${TEACHER_DATA:?' in script and '"${teacher_args[@]}"' in script
    subprocess.run(["bash", "-n", str(tmp_path / "s" / "flmplan.sbatch")], check=True)
    from planner.plan.plan_file import PlanObjective  # noqa: F401  (the field the runtime's flag fills)
    from runtime.objectives.freelm import IQ_SOURCE

    assert all(st.objective.teacher_data == IQ_SOURCE for st in plan.with_teacher_data(IQ_SOURCE).stages)
    r = subprocess.run([sys.executable, "-m", "runtime.train", "--help"], capture_output=True, text=True,
                       cwd=Path(__file__).parents[1])
    assert "--teacher-data" in r.stdout


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
                                "--nearest"])
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
                # The MLP (the plan's activation recompute); not `layernorm`, which the default Transformer
                # Engine spec fuses into the next linear layer, so recomputes nothing.
                assert (("mlp" in args.recompute_modules and "layernorm" not in args.recompute_modules)
                        or lay.attention == "unfused")
            assert args.use_distributed_optimizer == (lay.zero == 1)
            assert args.use_megatron_fsdp == (lay.zero >= 2)
            if lay.zero >= 2:
                assert args.data_parallel_sharding_strategy == ("optim_grads_params" if lay.zero == 3
                                                                else "optim_grads")
            assert float(args.min_lr) == pytest.approx(0.1 * st.lr)


def test_torchtitan_exports_load_with_torchtitans_config_manager(tmp_path, monkeypatch, flm_plan, auto_plan,
                                                                plan_300k):
    """The exported module is loaded by torchtitan 0.3.0's own ConfigManager (the `--module
    --config` route of `torchtitan.train`), and every stage means what the plan means: world size
    and degrees, pipeline virtual stages, micro-batches, steps, LR schedule, recompute, checkpoints,
    and the model's parameters (built on the meta device)."""
    pytest.importorskip("torchtitan.config.manager", reason="torchtitan is in the test extra")
    import importlib.metadata
    import sys

    import torch
    try:    # its model code, which the exported stages name; 0.3.0 needs torch newer than 2.11
        import torchtitan.models.llama3  # noqa: F401
    except ImportError as err:
        pytest.skip(f"torchtitan {importlib.metadata.version('torchtitan')} does not load under torch "
                    f"{torch.__version__}: {err}")
    from torchtitan.config.manager import ConfigManager
    from torchtitan.distributed.parallel_dims import ParallelDims
    from torchtitan.distributed.pipeline_parallel import _get_pipeline_metadata

    from planner.export.torchtitan import TORCHTITAN_MODULE, TORCHTITAN_VERSION

    assert importlib.metadata.version("torchtitan") == TORCHTITAN_VERSION
    plans = {"flm": flm_plan, "auto": auto_plan, "300k": load_plan(plan_300k)}
    for name, plan in plans.items():
        path, out = tmp_path / f"{name}.json", tmp_path / name
        path.write_text(json.dumps(plan.to_json()))
        r = runner.invoke(app, ["export", str(path), "--to", "torchtitan", "--out", str(out)])
        assert_one_sentence(r, "--nearest")       # GeLU, xPos or tied embeddings under PP, all of them named
        assert not out.exists()
        r = runner.invoke(app, ["export", str(path), "--to", "torchtitan", "--out", str(out), "--nearest"])
        assert r.exit_code == 0, r.output
        monkeypatch.syspath_prepend(str(out))
        sys.modules.pop(TORCHTITAN_MODULE, None)
        for k, st in enumerate(plan.stages):
            cfg = ConfigManager().parse_args(["--module", TORCHTITAN_MODULE, "--config", f"stage{k + 1}"])
            lay, m, par = st.layout, st.model, cfg.parallelism
            dims = ParallelDims.from_config(par, lay.gpus)       # refuses degrees that do not multiply out
            assert (dims.tp, dims.pp, dims.dp_replicate * dims.dp_shard) == (lay.tp, lay.pp, lay.dp)
            assert dims.dp_shard == (lay.dp if lay.zero else 1)
            assert cfg.training.steps == st.steps and cfg.training.global_batch_size == lay.global_batch
            micro_batches = lay.global_batch // (lay.dp * lay.micro_batch)
            if lay.pp > 1:
                virtual, layers, _, _ = _get_pipeline_metadata(dims, par, cfg.model_spec.model)
                assert (virtual, layers) == (lay.pp * lay.interleave, m.layers)
                assert par.pipeline_parallel_microbatch_size == lay.micro_batch
                assert cfg.training.local_batch_size // lay.micro_batch == micro_batches
            else:
                assert cfg.training.local_batch_size == lay.micro_batch
            assert cfg.lr_scheduler.warmup_steps == stage_warmup_steps(st)
            assert cfg.lr_scheduler.decay_type == "cosine" and cfg.lr_scheduler.min_lr_factor == 0.1
            assert cfg.optimizer.param_groups[0].optimizer_kwargs["lr"] == pytest.approx(st.lr)
            recompute = type(cfg.activation_checkpoint).__qualname__ if cfg.activation_checkpoint else "none"
            assert recompute == {"none": "none", "selective": "SelectiveAC.Config", "full": "FullAC.Config"}[
                lay.recompute]
            assert cfg.checkpoint.enable and cfg.checkpoint.interval == checkpoint_every_steps(plan, k)
            assert (cfg.checkpoint.initial_load_path is not None) == (k > 0)
            cfg.model_spec.model.update_from_config(config=cfg)  # torchtitan's own model checks (heads % tp)
            with torch.device("meta"):
                params = sum(p.numel() for p in cfg.model_spec.model.build().parameters())
            untied = m.vocab * m.hidden if m.tied_embeddings and lay.pp > 1 else 0
            assert params == pytest.approx(m.params() + untied, rel=0.01)


def test_megatron_refuses_what_it_cannot_express(tmp_path):
    """Megatron-LM has no xPos: refused in one sentence naming the field, nothing written."""
    plan = Path(__file__).resolve().parents[1] / "examples/plans/tiny_one_stage.json"
    r = runner.invoke(app, ["export", str(plan), "--to", "megatron", "--out-dir", str(tmp_path / "m")])
    assert r.exit_code == 2 and "Traceback" not in r.output and not (tmp_path / "m").exists()
    text = " ".join(r.output.split())
    assert "xPos (model.position)" in text and "--nearest" in text


def test_a_refusal_names_everything_the_tool_lacks_in_every_stage(tmp_path, flm_plan):
    """FLM-101B's plan to torchtitan: GeLU, xPos and (under pipeline parallelism) tied embeddings, every
    stage that has each, in one sentence; nothing written."""
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(flm_plan.to_json()))
    r = runner.invoke(app, ["export", str(path), "--to", "torchtitan", "--out", str(tmp_path / "t")])
    assert_one_sentence(r, "torchtitan does not have what this plan uses")
    text = " ".join(r.output.split())
    for k in (1, 2, 3):
        assert f"stage {k} (" in text
    for what in ("GeLU MLP (model.activation)", "xPos (model.position)", "(model.tied_embeddings) under pipeline",
                 "SwiGLU with the same parameters, plain rotary and untied embeddings instead"):
        assert what in text, what
    assert not (tmp_path / "t").exists()


def test_an_export_replaces_the_one_before_it_and_leaves_other_files(tmp_path, flm_plan, auto_plan):
    """A 3-stage export into a folder that held a 4-stage one leaves no stale stage4 file; another
    target's files and the user's own stay."""
    out = tmp_path / "e"
    for plan, name in ((auto_plan, "four"), (flm_plan, "three")):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(plan.to_json()))
        if name == "three":
            (out / "notes.txt").write_text("mine")
            r = runner.invoke(app, ["export", str(path), "--to", "slurm", "--out", str(out)])
            assert r.exit_code == 0, r.output
        r = runner.invoke(app, ["export", str(path), "--to", "megatron", "--out", str(out), "--nearest"])
        assert r.exit_code == 0, r.output
    assert len(auto_plan.stages) == 4 and len(flm_plan.stages) == 3
    names = {f.name for f in out.iterdir()}
    assert {f"stage{k}.megatron.args" for k in (1, 2, 3)} <= names and "stage4.megatron.args" not in names
    assert {"notes.txt", "flmplan.sbatch", "flmplan-export.json"} <= names


def test_exports_write_every_setting_of_the_runtimes_optimizer(tmp_path, flm_plan, monkeypatch):
    """β1, β2, ε, weight decay and what it spares, clipping and dropout, as the runtime's own optimizer
    (make_optimizer on a model) and step have them: in Megatron-LM's arguments, and in torchtitan's
    config with its parameter groups matching the runtime's split of decayed and undecayed tensors."""
    import importlib
    import re

    from torch import nn

    from planner.model.optimizer import MAX_GRAD_NORM
    from runtime.model.decoder import Decoder, DecoderConfig
    from runtime.parallel.optim import make_optimizer

    model = Decoder(DecoderConfig(layers=2, hidden=32, heads=2, ffn=64, vocab=64, seq=16))
    opt = make_optimizer(model, 1e-3)
    (betas,), (eps,) = {g["betas"] for g in opt.param_groups}, {g["eps"] for g in opt.param_groups}
    decay = {n: g["weight_decay"] for g in opt.param_groups for p in g["params"]
             for n, q in model.named_parameters() if q is p}
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(flm_plan.to_json()))
    r = runner.invoke(app, ["export", str(path), "--to", "megatron", "--out", str(tmp_path / "m"), "--nearest"])
    assert r.exit_code == 0, r.output
    args = parse_megatron((tmp_path / "m" / "stage1.megatron.args").read_text())
    assert (float(args.adam_beta1), float(args.adam_beta2)) == betas and float(args.adam_eps) == eps
    assert float(args.weight_decay) == max(decay.values()) and float(args.clip_grad) == MAX_GRAD_NORM
    assert float(args.hidden_dropout) == float(args.attention_dropout) == 0.0
    # Megatron-LM's rule spares biases and 1-D tensors, as the runtime does, and says the embedding differs.
    assert all(v == 0.0 for n, v in decay.items() if n.endswith(".bias") or "norm" in n or "ln" in n)
    assert "decays the embedding" in (tmp_path / "m" / "stage1.megatron.args").read_text()
    pytest.importorskip("torchtitan")
    try:
        r = runner.invoke(app, ["export", str(path), "--to", "torchtitan", "--out", str(tmp_path / "t"),
                                "--nearest"])
        monkeypatch.syspath_prepend(str(tmp_path / "t"))
        module = importlib.import_module("flmplan_torchtitan")
    except ImportError as err:
        pytest.skip(f"torchtitan cannot load under this torch: {err}")
    cfg = module.stage1()
    groups = cfg.optimizer.param_groups
    for g in groups:
        assert g.optimizer_kwargs["betas"] == betas and g.optimizer_kwargs["eps"] == eps
    assert [g.optimizer_kwargs["weight_decay"] for g in groups] == [0.0, max(decay.values())]
    assert cfg.training.max_norm == MAX_GRAD_NORM
    import torch

    cfg.model_spec.model.update_from_config(config=cfg)
    with torch.device("meta"):
        tt = cfg.model_spec.model.build()
    for name, p in tt.named_parameters():
        spared = re.search(groups[0].pattern, name) is not None
        assert spared == (p.dim() < 2 or "tok_embeddings" in name), name
    importlib.invalidate_caches()
    sys.modules.pop("flmplan_torchtitan", None)


def test_learned_positions_export_to_megatron_and_are_refused_where_not_trained(tmp_path, auto_plan):
    """A GPT with learned absolute positions (Megatron-LM's `learned_absolute`): Megatron-LM takes it
    as it is (its own parser accepts the arguments); torchtitan has only rotary (refused, or rotary
    with --nearest, saying so); the runtime trains rotary or xPos and refuses it in one sentence
    before any process starts."""
    raw = auto_plan.to_json()
    for st in raw["stages"]:
        st["model"]["position"] = "learned"
    path = tmp_path / "gpt.json"
    path.write_text(json.dumps(raw))
    r = runner.invoke(app, ["export", str(path), "--to", "megatron", "--out-dir", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    for k in range(len(raw["stages"])):
        text = (tmp_path / "m" / f"stage{k + 1}.megatron.args").read_text()
        assert parse_megatron(text).position_embedding_type == "learned_absolute" and "rotary" not in text
    swiglu = tmp_path / "gpt-swiglu.json"     # torchtitan's MLP, so that the positions are what it refuses
    swiglu.write_text(json.dumps({**raw, "stages": [{**st, "model": {**st["model"], "activation": "swiglu"}}
                                                    for st in raw["stages"]]}))
    r = runner.invoke(app, ["export", str(swiglu), "--to", "torchtitan", "--out", str(tmp_path / "t")])
    assert_one_sentence(r, "learned absolute positions (model.position)")
    r = runner.invoke(app, ["export", str(path), "--to", "torchtitan", "--out", str(tmp_path / "t"), "--nearest"])
    assert r.exit_code == 0 and "in place of learned absolute positions" in (tmp_path / "t" / "flmplan_torchtitan.py"
                                                                            ).read_text()
    r = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "run")])
    assert_one_sentence(r, "uses learned positions (model.position), which the runtime does not train")
    assert not (tmp_path / "run").exists()


def test_the_default_plan_exports_to_megatron_when_planned_with_rotary(tmp_path, auto_plan):
    """The default plan uses xPos, which Megatron-LM lacks: the refusal names the one command that plans
    an exportable schedule, and the plan it makes exports without --nearest."""
    path = tmp_path / "xpos.json"
    path.write_text(json.dumps(auto_plan.to_json()))
    r = runner.invoke(app, ["export", str(path), "--to", "megatron", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--position rotary" in " ".join(r.output.split())
    plan = tmp_path / "rotary.json"
    r = runner.invoke(app, ["simulate", "--budget", "100000", "--trials", "20", "--position", "rotary",
                            "--out", str(plan)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["export", str(plan), "--to", "megatron", "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert all("--position-embedding-type rope" in f.read_text() for f in (tmp_path / "m").glob("*.args"))
