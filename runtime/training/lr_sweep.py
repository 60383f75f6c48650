"""µTransfer's search (Yang et al. 2022, Tensor Programs V, §4–5): train proxy models of several
widths over a grid of learning rates (and output multipliers), under SP and under µP, and see
whether the best values hold across widths. Under µP they should; under SP the best rate drifts
down as the width grows.

Each proxy is trained with the runtime's own pieces — its Decoder, µP rules (runtime/model/mup.py),
AdamW groups, learning-rate schedule, gradient clipping and data sampler — in this process, on
one device (a CPU, or one GPU for larger proxies). Every proxy writes a run folder with
`metrics.jsonl` and `proxy.json`, which `flmplan fit-loss` reads; a grid that was stopped goes
on where it was (finished proxies are not trained again).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from planner.errors import FlmplanError
from planner.model.optimizer import MAX_GRAD_NORM
from planner.plan.plan_file import FIRST_WARMUP_STEPS
from runtime.data.corpus import Corpus, load_corpus
from runtime.data.loader import Sampler
from runtime.evaluation.held_out import EVAL_SHARE, held_out, held_out_loss
from runtime.model.decoder import Decoder, DecoderConfig, causal_lm_loss
from runtime.parallel.optim import make_optimizer, set_lr
from runtime.training.lr_schedule import lr_at

PROXY_FILE = "proxy.json"


@dataclass(frozen=True)
class ProxyShape:
    """What every proxy of a grid shares; the width alone varies (heads = width / head_dim)."""

    layers: int = 2
    head_dim: int = 16
    ffn_ratio: int = 4
    seq: int = 64
    batch: int = 8
    steps: int = 100

    def config(self, width: int, parametrization: str, base_width: int, output_mult: float,
               vocab: int) -> DecoderConfig:
        return DecoderConfig(layers=self.layers, hidden=width, heads=width // self.head_dim,
                             ffn=self.ffn_ratio * width, vocab=vocab, seq=self.seq,
                             mup=parametrization == "mup", mup_base_width=base_width, mup_output_mult=output_mult)


def train_proxy(cfg: DecoderConfig, lr: float, shape: ProxyShape, corpus: Corpus, held: torch.Tensor,
                data: str, seed: int, device: torch.device, out: Path) -> dict:
    """Train one proxy; write its metrics and description to `out`; return the description."""
    torch.manual_seed(seed)
    model = Decoder(cfg).to(device)
    opt = make_optimizer(model, lr)
    sampler = Sampler(corpus, seq=cfg.seq, seed=seed, holdout=EVAL_SHARE)
    warmup = min(FIRST_WARMUP_STEPS, max(1, shape.steps // 5))
    tokens_per_step = shape.batch * cfg.seq
    out.mkdir(parents=True, exist_ok=True)
    losses: list[float] = []
    t0 = time.perf_counter()
    with open(out / "metrics.jsonl", "w") as metrics:
        metrics.write(json.dumps({"event": "start", "data": data, "device": str(device)}) + "\n")
        for step in range(shape.steps):
            set_lr(opt, lr_at(step, shape.steps, lr, warmup))
            x, y = sampler.batch(shape.batch, 0, 1)
            loss = causal_lm_loss(model(x.to(device)), y.to(device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            opt.step()
            opt.zero_grad(set_to_none=True)
            value = float(loss.detach())
            metrics.write(json.dumps({"stage": 1, "step": step, "loss": value,
                                      "tokens": (step + 1) * tokens_per_step}) + "\n")
            if not math.isfinite(value):
                break
            losses.append(value)
    diverged = len(losses) < shape.steps
    desc = {"kind": "flmplan-proxy", "parametrization": "mup" if cfg.mup else "sp", "width": cfg.hidden,
            "base_width": cfg.mup_base_width, "lr": lr, "output_mult": cfg.mup_output_mult,
            "params": cfg.params(), "tokens_per_step": tokens_per_step, "steps": shape.steps, "data": data,
            "seed": seed, "model": cfg.to_dict(), "diverged": diverged,
            "final_loss": None if diverged else held_out_loss(model, held, device), "seconds": time.perf_counter() - t0}
    (out / PROXY_FILE).write_text(json.dumps(desc, indent=1))
    return desc


def run_name(parametrization: str, width: int, lr: float, output_mult: float) -> str:
    return f"{parametrization}-w{width}-lr{lr:g}-om{output_mult:g}"


def check_grid(widths: list[int], lrs: list[float], output_mults: list[float], shape: ProxyShape) -> None:
    """Refuse, before training, a grid that cannot show a transfer."""
    if len(set(widths)) < 2:
        raise FlmplanError("tune needs at least two different widths: the question is whether the best "
                           "learning rate holds across them.")
    for w in widths:
        if w <= 0 or w % shape.head_dim:
            raise FlmplanError(f"width {w} is not a positive multiple of the head dimension {shape.head_dim}.")
    if not lrs or any(lr <= 0 for lr in lrs):
        raise FlmplanError("--lrs must be positive learning rates.")
    if not output_mults or any(m <= 0 for m in output_mults):
        raise FlmplanError("--output-mults must be positive.")


def tune(widths: list[int], lrs: list[float], output_mults: list[float], parametrizations: list[str],
         shape: ProxyShape, out: Path, data: list[str] | None = None, base_width: int | None = None,
         seed: int = 1234, device: str = "cpu", log=print) -> dict:
    """Train the whole grid (skipping proxies already finished in `out`) and summarise it."""
    check_grid(widths, lrs, output_mults, shape)
    if device == "cuda" and not torch.cuda.is_available():
        raise FlmplanError("--device cuda was asked for, but torch sees no GPU here.")
    # The proxies' vocabulary is the data's tokenizer's, as a run's would be (`flmplan eval` and a plan
    # read the same tokenizer).
    corpus = load_corpus(data)
    corpus.check(corpus.vocab, shape.seq)
    desc = corpus.text
    held = held_out(corpus, shape.seq)
    base = base_width or min(widths)
    rows = []
    for kind in parametrizations:
        for width in sorted(set(widths)):
            for m in output_mults if kind == "mup" else [1.0]:      # SP has no output multiplier
                for lr in lrs:
                    folder = out / "runs" / run_name(kind, width, lr, m)
                    done = folder / PROXY_FILE
                    if done.exists():
                        row = json.loads(done.read_text())
                    else:
                        cfg = shape.config(width, kind, base, m, corpus.vocab)
                        row = train_proxy(cfg, lr, shape, corpus, held, desc, seed, torch.device(device), folder)
                    row["run"] = str(folder)
                    rows.append(row)
                    loss = "diverged" if row["diverged"] else f"{row['final_loss']:.4f}"
                    log(f"{kind:3} width {width:5d} lr {lr:<8g} output_mult {m:<4g} loss {loss}")
    result = {"widths": sorted(set(widths)), "lrs": lrs, "output_mults": output_mults, "base_width": base,
              "shape": shape.__dict__, "data": desc, "seed": seed, "runs": rows, "best": best_per_width(rows),
              "how": f"final loss = loss on {len(held)} held-out sequences (the last {EVAL_SHARE:.0%} of the data, "
                     "never trained on); each proxy trained alone with the runtime's model, optimizer and schedule"}
    result["drift"] = drift(result["best"])
    (out / "tune.json").write_text(json.dumps(result, indent=1))
    return result


def best_per_width(rows: list[dict]) -> dict[str, dict[int, dict]]:
    """parametrization → width → the row with the lowest final loss."""
    best: dict[str, dict[int, dict]] = {}
    for r in rows:
        if r["diverged"]:
            continue
        cur = best.setdefault(r["parametrization"], {}).get(r["width"])
        if cur is None or r["final_loss"] < cur["final_loss"]:
            best[r["parametrization"]][r["width"]] = {k: r[k] for k in ("lr", "output_mult", "final_loss", "run")}
    return best


def drift(best: dict[str, dict[int, dict]]) -> dict[str, float]:
    """How far the best learning rate moves from the narrowest to the widest proxy, in factors of 2
    (log2 of the ratio): near 0 means the optimum transfers."""
    out = {}
    for kind, per_width in best.items():
        ws = sorted(per_width)
        out[kind] = math.log2(per_width[ws[-1]]["lr"] / per_width[ws[0]]["lr"])
    return out
