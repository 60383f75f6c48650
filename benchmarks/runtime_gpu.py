"""The runtime against a plain PyTorch training loop on the same shapes, on one device.

    python benchmarks/runtime_gpu.py                         # a GPU: ≈0.35B, 0.75B, 1.3B, 2.7B at seq 2048
    python benchmarks/runtime_gpu.py --device cpu            # what a CPU allows: tiny shapes, fp32
    … [--json]                                               # the rows as JSON instead of the table

The reference loop is written here, independent of the runtime: the same decoder (pre-LN,
biases, rotary with xPos, tanh-GeLU MLP, tied embeddings), bf16 autocast over fp32 weights,
`scaled_dot_product_attention`, fused AdamW, gradient clipping, random tokens already on the
device — what a careful engineer writes by hand. It runs eager and under `torch.compile`.
`flmplan`'s runtime runs the same shape as a one-stage plan under torchrun (`--no-compile` and
`--compile`). For each, tokens/s (median of the steady steps), MFU against the dense peak, peak
memory; the runtime's printed MFU is checked against tokens/s × FLOPs per token ÷ peak computed
here, and the planner's prediction for the stage is printed beside them.

Needs only torch and numpy (and the plan loader's pydantic, which benchmarks/runtime_gpu.sh
brings from wheels when the image lacks it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SEQ = 2048
VOCAB = 50304
# name: (layers, hidden, heads, micro_batch); 8 sequences a step (the issue's setting).
GPU_SHAPES = {"0.35B": (24, 1024, 16, 8), "0.75B": (24, 1536, 16, 8), "1.3B": (24, 2048, 16, 8),
              "2.7B": (32, 2560, 20, 4)}
CPU_SHAPES = {"tiny-a": (2, 128, 4, 4), "tiny-b": (4, 256, 8, 4)}
GLOBAL_BATCH = 8
DENSE_BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "A800": 312e12, "B200": 2250e12}


def flops_per_token(layers: int, hidden: int, seq: int, vocab: int) -> float:
    """Model FLOPs per token, forward + backward (Narayanan et al. 2021, eq. 3 without recompute):
    24·l·h² (QKV, output, 4h MLP) + 4·l·s·h (attention scores) + 2·h·V (logits), times 3."""
    return 3 * (24 * layers * hidden**2 + 4 * layers * seq * hidden + 2 * hidden * vocab)


# --- the reference: a plain decoder and loop ------------------------------------------------
class Block(nn.Module):
    def __init__(self, h: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(h), nn.LayerNorm(h)
        self.qkv, self.proj = nn.Linear(h, 3 * h), nn.Linear(h, h)
        self.fc, self.out = nn.Linear(h, 4 * h), nn.Linear(4 * h, h)

    def forward(self, x: torch.Tensor, rot: tuple[torch.Tensor, ...]) -> torch.Tensor:
        B, T, H = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, H // self.heads).permute(2, 0, 3, 1, 4)
        cos, sin, zq, zk = rot
        q, k = rotate(q, cos, sin, zq), rotate(k, cos, sin, zk)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, H))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack(((a * cos - b * sin) * scale, (a * sin + b * cos) * scale), -1).flatten(-2)


class GPT(nn.Module):
    def __init__(self, layers: int, h: int, heads: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, h)
        self.blocks = nn.ModuleList(Block(h, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(h)
        half = h // heads // 2
        freq = 1.0 / 10000 ** (torch.arange(half) / half)
        pos = torch.arange(SEQ, dtype=torch.float32)
        ang = torch.outer(pos, freq)
        zeta = (torch.arange(half) / half + 0.4) / 1.4                  # xPos (Sun et al. 2022)
        power = (pos - SEQ // 2)[:, None] / 512
        for name, t in (("cos", ang.cos()), ("sin", ang.sin()), ("zq", zeta**power), ("zk", zeta ** (-power))):
            self.register_buffer(name, t, persistent=False)
        for n, p in self.named_parameters():
            if p.dim() > 1:
                nn.init.normal_(p, std=0.02 / (math.sqrt(2 * layers) if n.endswith(("proj.weight", "out.weight"))
                                               else 1))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx)
        for b in self.blocks:
            x = b(x, (self.cos, self.sin, self.zq, self.zk))
        return F.linear(self.ln_f(x), self.wte.weight)


def reference(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype | None, compiled: bool,
              steps: int, seq: int) -> dict:
    layers, h, heads, micro = shape
    torch.manual_seed(0)
    model = GPT(layers, h, heads).to(device)
    if seq != SEQ:
        for name in ("cos", "sin", "zq", "zk"):
            setattr(model, name, getattr(model, name)[:seq])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=device.type == "cuda")
    fwd = torch.compile(model) if compiled else model
    accum = GLOBAL_BATCH // micro
    data = torch.randint(0, VOCAB, (GLOBAL_BATCH, seq + 1), device=device)
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(steps):
        t0 = time.perf_counter()
        for i in range(accum):
            chunk = data[i * micro:(i + 1) * micro]
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = fwd(chunk[:, :-1])
            loss = F.cross_entropy(logits.float().view(-1, VOCAB), chunk[:, 1:].reshape(-1))
            (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times[len(times) // 3:])
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    del model, opt, fwd
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"tokens_per_s": GLOBAL_BATCH * seq / step_s, "memory_gib": memory, "loss": float(loss.detach())}


# --- the runtime -----------------------------------------------------------------------------
def runtime(shape: tuple[int, ...], device: str, dtype: str, compiled: bool, steps: int, seq: int,
            folder: Path) -> dict:
    layers, h, heads, micro = shape
    plan = json.loads((ROOT / "examples/plans/tiny_one_stage.json").read_text())
    plan["name"] = f"runtime benchmark {layers}x{h}"
    plan["dtype"] = dtype
    st = plan["stages"][0]
    st["model"] = {"layers": layers, "hidden": h, "heads": heads, "ffn": 4 * h, "vocab": VOCAB, "seq": seq}
    st["layout"] = {"tp": 1, "pp": 1, "dp": 1, "micro_batch": micro, "global_batch": GLOBAL_BATCH, "zero": 1}
    st["steps"] = steps
    st["tokens"] = float(steps * GLOBAL_BATCH * seq)
    path = folder / "plan.json"
    path.write_text(json.dumps(plan))
    out = folder / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", "-m",
           "runtime.train", "--plan", str(path), "--out", str(out), "--no-checkpoints", "--log-every", "1",
           "--dtype", dtype, "--compile" if compiled else "--no-compile", "--seed", "0"]
    env = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(f"runtime failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    rows = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "step_s" in r]
    steady = rows[len(rows) // 3:]
    median = statistics.median(r["tokens_per_s"] for r in steady)
    row = min(steady, key=lambda r: abs(r["tokens_per_s"] - median))
    banner = next((line for line in r.stdout.splitlines() if "MFU against" in line), "")
    return {"validate": validate_errors(out) if device == "cuda" else "",
            "tokens_per_s": row["tokens_per_s"], "mfu": row["mfu"], "memory_gib": row["memory_gib_per_gpu"],
            "predicted_tokens_per_s": row.get("predicted_tokens_per_s"), "loss": rows[-1]["loss"],
            "peak_banner": banner}


def validate_errors(run_dir: Path) -> str:
    """`flmplan validate`'s step-time error for the run: with the built-in profile of the GPU and,
    on an H200, with the measured full-sweep profile shipped in profiles/data/measured/."""
    from planner.cost.device_profile import load_profile
    from planner.errors import FlmplanError
    from planner.plan.validation import validate_run

    texts = []
    measured = ROOT / "profiles/data/measured/h200-full-2026-11-28.json"
    for label, prof in (("built-in", None), ("measured", load_profile(measured))):
        if label == "measured" and "H200" not in torch.cuda.get_device_name(0):
            continue
        try:
            _, _, checks = validate_run(run_dir, None, prof)
            texts.append(f"{label} {checks[0].step_error:+.1%}")
        except FlmplanError as err:
            texts.append(f"{label}: {err}")
    return "; ".join(texts)


def dense_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in DENSE_BF16_PEAK.items() if k in name), None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shapes", nargs="*", default=None, help="names of shapes (default: all for the device)")
    ap.add_argument("--compile-shapes", nargs="*", default=None,
                    help="shapes also run under torch.compile (default on a GPU: 1.3B)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    say = (lambda *a, **k: None) if args.json else print
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    shapes = GPU_SHAPES if gpu else CPU_SHAPES
    names = args.shapes or list(shapes)
    compile_names = args.compile_shapes if args.compile_shapes is not None else (["1.3B"] if gpu else [])
    steps = args.steps or (16 if gpu else 6)
    seq = SEQ if gpu else 128
    dtype_name = "bf16" if gpu else "fp32"
    dtype = torch.bfloat16 if gpu else None
    peak = dense_peak(device)
    what = torch.cuda.get_device_name(device) if gpu else "CPU"
    say(f"{what}, torch {torch.__version__}, {dtype_name}, seq {seq}, {GLOBAL_BATCH} sequences a step, "
          f"{steps} steps (median of the last two thirds)")
    header = (f"{'shape':7} {'mode':8} {'ref tok/s':>10} {'run tok/s':>10} {'run/ref':>8} {'ref MFU':>8} "
              f"{'run MFU':>8} {'MFU chk':>8} {'ref GiB':>8} {'run GiB':>8} {'planner tok/s':>13}")
    say(header, flush=True)
    rows: list[dict] = []
    for name in names:
        shape = shapes[name]
        fpt = flops_per_token(shape[0], shape[1], seq, VOCAB)
        for compiled in ([False, True] if name in compile_names else [False]):
            ref = reference(shape, device, dtype, compiled, steps, seq)
            with tempfile.TemporaryDirectory() as tmp:
                run = runtime(shape, args.device, dtype_name, compiled, steps, seq, Path(tmp))
            # The runtime's MFU must equal tokens/s × FLOPs per token ÷ its peak; on a GPU the peak is
            # the data sheet's, so it is recomputed here from the catalog-independent table above.
            check = run["tokens_per_s"] * fpt / peak if peak else float("nan")
            ok = "n/a" if not peak else "ok" if abs(check - run["mfu"]) <= 1e-3 * check else f"{check:.3f}!"
            ref_mfu = f"{ref['tokens_per_s'] * fpt / peak:.1%}" if peak else "—"
            ref_gib = f"{ref['memory_gib']:.1f}" if gpu else "—"
            pred = run["predicted_tokens_per_s"]
            pred_text = "—" if pred is None else f"{pred:,.0f}"
            say(f"{name:7} {'compile' if compiled else 'eager':8} {ref['tokens_per_s']:10,.0f} "
                  f"{run['tokens_per_s']:10,.0f} {run['tokens_per_s'] / ref['tokens_per_s']:8.1%} {ref_mfu:>8} "
                  f"{run['mfu']:8.1%} {ok:>8} {ref_gib:>8} {run['memory_gib']:8.1f} "
                  f"{pred_text:>13}", flush=True)
            rows.append({"shape": name, "compiled": compiled, "reference": ref, "runtime": run,
                         "mfu_check": check, "flops_per_token": fpt})
            if run["validate"]:
                say(f"        flmplan validate, step time: {run['validate']}", flush=True)
    say(f"runtime: {run['peak_banner'].strip()}")
    if args.json:
        print(json.dumps({"device": what, "torch": torch.__version__, "dtype": dtype_name, "seq": seq,
                          "global_batch": GLOBAL_BATCH, "steps": steps, "peak_flops": peak, "rows": rows},
                         indent=1, default=str))


if __name__ == "__main__":
    main()
