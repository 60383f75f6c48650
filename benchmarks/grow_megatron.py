"""`flmplan grow --to megatron` on FLM-101B's schedule at CPU size (issue 37): stage 1 built by megatron-core
from the exported arguments and saved by megatron-core's own writer, each later stage's first weights
written by `flmplan grow`, read back by megatron-core's loader and run by megatron-core's GPT.

    python benchmarks/grow_megatron.py [--json] [--memory]

For each growth: the loss on a fixed batch before and after, the largest logit difference, and what the
same growth costs with zero new hidden dimensions (Staged Training's operator, exact for RMSNorm) in
place of LEMON's average expansion, which Megatron-LM's LayerNorm needs. Stage 1 is moved away from its
init (weights + N(0.05, 0.2²)), as a trained stage is: its residual stream has a mean, which is what
zero dimensions get wrong.

`--memory` measures what `flmplan grow` holds: the same schedule at 1024 → 2048 wide and 12 → 24 blocks
(bf16, vocabulary 32,000; 0.2 → 0.7 → 1.3 billion parameters), each growth a `flmplan grow` process of its
own, its peak resident memory (`wait4`'s ru_maxrss) beside the sizes of the checkpoints it reads and writes.

megatron-core assumes CUDA in three places a CPU save and forward pass through; `megatron_on_cpu` sends
them to the CPU (tests/test_grow_targets.py uses it too).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@contextlib.contextmanager
def megatron_on_cpu():
    """megatron-core's model-parallel state on one gloo process, with its three CUDA assumptions sent to
    the CPU: its checkpoint writer synchronises the device, rotary moves its frequencies to the current
    device, and attention forks the model-parallel CUDA RNG around dropout (0 in these models)."""
    import torch.distributed as dist
    from megatron.core import parallel_state, tensor_parallel

    with contextlib.ExitStack() as stack:
        if not dist.is_initialized():
            store = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "store"
            dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
            stack.callback(dist.destroy_process_group)
        stack.enter_context(mock.patch.object(torch.cuda, "synchronize", lambda *a, **k: None))
        stack.enter_context(mock.patch.object(torch.cuda, "current_device", lambda: "cpu"))
        stack.enter_context(mock.patch.object(tensor_parallel.get_cuda_rng_tracker(), "fork",
                                              lambda *a, **k: contextlib.nullcontext()))
        parallel_state.initialize_model_parallel(1, 1)
        stack.callback(parallel_state.destroy_model_parallel)
        yield


def megatron_gpt(args_file: Path, vocab: int):
    """megatron-core's GPT (local layer spec, on the CPU) as Megatron-LM builds it from exported arguments."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

    words = shlex.split(" ".join(line for line in args_file.read_text().splitlines() if not line.startswith("#")))
    flags = {w: (words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else True)
             for i, w in enumerate(words) if w.startswith("--")}
    swiglu = "--swiglu" in flags
    cfg = TransformerConfig(
        num_layers=int(flags["--num-layers"]), hidden_size=int(flags["--hidden-size"]),
        num_attention_heads=int(flags["--num-attention-heads"]), ffn_hidden_size=int(flags["--ffn-hidden-size"]),
        num_query_groups=int(flags.get("--num-query-groups", flags["--num-attention-heads"])),
        layernorm_epsilon=float(flags["--norm-epsilon"]), hidden_dropout=float(flags["--hidden-dropout"]),
        attention_dropout=float(flags["--attention-dropout"]), gated_linear_unit=swiglu,
        activation_func=torch.nn.functional.silu if swiglu else torch.nn.functional.gelu,
        normalization="LayerNorm", add_bias_linear=True, use_cpu_initialization=True)
    return GPTModel(cfg, get_gpt_layer_local_spec(), vocab_size=vocab, max_sequence_length=int(flags["--seq-length"]),
                    position_embedding_type=flags["--position-embedding-type"],
                    share_embeddings_and_output_weights="--untie-embeddings-and-output-weights" not in flags).eval()


def save_megatron(model, folder: Path, iteration: int) -> None:
    """A Megatron-LM --save folder, its checkpoint written by megatron-core as Megatron-LM writes one."""
    from megatron.core import dist_checkpointing

    (folder / f"iter_{iteration:07d}").mkdir(parents=True)
    dist_checkpointing.save({"model": model.sharded_state_dict(), "checkpoint_version": 3.0,
                             "iteration": iteration}, str(folder / f"iter_{iteration:07d}"))
    (folder / "latest_checkpointed_iteration.txt").write_text(str(iteration))


def load_megatron(model, grown: Path) -> None:
    """What Megatron-LM's --pretrained-checkpoint does: follow the tracker to release/, read the model's
    tensors with megatron-core (every key accounted for both ways), load them strictly."""
    from megatron.core import dist_checkpointing

    assert (grown / "latest_checkpointed_iteration.txt").read_text() == "release"
    state = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(grown / "release"),
                                    strict="raise_all")
    assert state["checkpoint_version"] == 3.0
    model.load_state_dict(state["model"], strict=True)


def _logits(model, batch: torch.Tensor) -> torch.Tensor:
    n = batch.shape[1] - 1
    positions = torch.arange(n).expand(batch.shape[0], -1)
    causal = torch.triu(torch.ones(n, n), diagonal=1).bool()[None, None]      # True: masked
    with torch.no_grad():
        return model(batch[:, :-1], positions, causal).float()


def _loss(logits: torch.Tensor, batch: torch.Tensor) -> float:
    return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)))


def _zero_new_dims(model, d0: int) -> None:
    """The same growth with zero new hidden dimensions: what the embeddings and output projections write
    there is set to zero (Staged Training's operator, exact under RMSNorm only)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("embedding."):
                p[:, d0:] = 0
            elif name.endswith(("linear_proj.weight", "linear_fc2.weight", "linear_proj.bias", "linear_fc2.bias")):
                p[d0:] = 0


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def memory(out: Path) -> list[dict]:
    """Peak resident memory of `flmplan grow` against the sizes of what it reads and writes."""
    import os
    import subprocess

    from typer.testing import CliRunner

    from flmplan.cli import app
    from runtime.model.scale import tiny_plan

    raw = tiny_plan(json.loads((ROOT / "examples/plans/flm101b_plan.json").read_text()), nproc=1)
    for st, (hidden, layers) in zip(raw["stages"], ((1024, 12), (2048, 12), (2048, 24)), strict=True):
        st["model"] |= {"hidden": hidden, "heads": hidden // 128, "ffn": 4 * hidden, "layers": layers,
                        "vocab": 32000, "seq": 2048}
    (out / "plan.json").write_text(json.dumps(raw))
    r = CliRunner().invoke(app, ["export", str(out / "plan.json"), "--to", "megatron", "--nearest", "--out", str(out)])
    assert r.exit_code == 0, r.output
    with megatron_on_cpu():
        torch.manual_seed(0)
        save_megatron(megatron_gpt(out / "stage1.megatron.args", 32000).bfloat16(), out / "stage1", 1)
    rows, source = [], out / "stage1"
    for stage in (2, 3):
        grown = out / f"stage{stage}-grown"
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "flmplan.cli", "grow", str(source), "--plan",
                                 str(out / "plan.json"), "--stage", str(stage), "--to", "megatron", "--out",
                                 str(grown)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        grow_s = time.perf_counter() - t0
        assert os.waitstatus_to_exitcode(status) == 0, proc.stdout.read().decode()
        rows.append({"stage": stage, "read_bytes": _folder_bytes(source), "written_bytes": _folder_bytes(grown),
                     "peak_rss_bytes": usage.ru_maxrss * 1024, "grow_s": grow_s})
        source = grown
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--memory", action="store_true")
    args = ap.parse_args()
    if args.memory:
        with tempfile.TemporaryDirectory() as tmp:
            rows = memory(Path(tmp))
        if args.json:
            print(json.dumps({"rows": rows}, indent=1))
            return
        print("| growth | checkpoint read | checkpoint written | peak resident memory | time |")
        print("|---|---:|---:|---:|---:|")
        for row in rows:
            print(f"| to stage {row['stage']} | {row['read_bytes'] / 2**30:.2f} GiB | "
                  f"{row['written_bytes'] / 2**30:.2f} GiB | {row['peak_rss_bytes'] / 2**30:.2f} GiB | "
                  f"{row['grow_s']:.0f} s |")
        return
    from typer.testing import CliRunner

    from flmplan.cli import app
    from runtime.model.scale import tiny_plan

    runner = CliRunner()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, megatron_on_cpu():
        out = Path(tmp)
        raw = tiny_plan(json.loads((ROOT / "examples/plans/flm101b_plan.json").read_text()), nproc=1)
        (out / "plan.json").write_text(json.dumps(raw))
        r = runner.invoke(app, ["export", str(out / "plan.json"), "--to", "megatron", "--nearest", "--out", str(out)])
        assert r.exit_code == 0, r.output
        vocab = raw["stages"][0]["model"]["vocab"]
        batch = torch.randint(0, vocab, (8, 65), generator=torch.Generator().manual_seed(0))
        torch.manual_seed(0)
        previous = megatron_gpt(out / "stage1.megatron.args", vocab)
        with torch.no_grad():
            for p in previous.parameters():
                p.add_(torch.randn(p.shape) * 0.2 + 0.05)
        save_megatron(previous, out / "stage1", 40)
        for stage in range(2, len(raw["stages"]) + 1):
            grown = out / f"stage{stage}-grown"
            t0 = time.perf_counter()
            r = runner.invoke(app, ["grow", str(out / f"stage{stage - 1}"), "--plan", str(out / "plan.json"),
                                    "--stage", str(stage), "--to", "megatron", "--out", str(grown)])
            grow_s = time.perf_counter() - t0
            assert r.exit_code == 0, r.output
            model = megatron_gpt(out / f"stage{stage}.megatron.args", vocab)
            load_megatron(model, grown)
            before, after = _logits(previous, batch), _logits(model, batch)
            old, new = raw["stages"][stage - 2]["model"], raw["stages"][stage - 1]["model"]
            zero = megatron_gpt(out / f"stage{stage}.megatron.args", vocab)
            load_megatron(zero, grown)
            _zero_new_dims(zero, old["hidden"])
            zeroed = _logits(zero, batch)
            rows.append({
                "stage": stage, "growth": {k: [old[k], new[k]] for k in ("layers", "hidden", "heads", "ffn")
                                           if old[k] != new[k]},
                "parameters": sum(p.numel() for p in model.parameters()), "grow_s": grow_s,
                "loss_before": _loss(before, batch), "loss_after": _loss(after, batch),
                "max_logit_diff": float((after - before).abs().max()),
                "zero_dims_loss_after": _loss(zeroed, batch),
                "zero_dims_max_logit_diff": float((zeroed - before).abs().max())})
            previous = model
            save_megatron(previous, out / f"stage{stage}", 100 * stage)
    result = {"batch": [8, 64], "rows": rows}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print("| growth | parameters | loss before | loss after | max \\|Δlogit\\| | zero new dims: loss after, "
          "max \\|Δlogit\\| |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        what = ", ".join(f"{k} {a} → {b}" for k, (a, b) in row["growth"].items())
        print(f"| {what} | {row['parameters']:,} | {row['loss_before']:.6f} | {row['loss_after']:.6f} | "
              f"{row['max_logit_diff']:.1e} | {row['zero_dims_loss_after']:.6f}, "
              f"{row['zero_dims_max_logit_diff']:.3f} |")


if __name__ == "__main__":
    main()
