"""Grow versus scratch, measured: proxy pairs that say what a token after a growth is worth.

For one target shape, one run trains it from scratch; others train a smaller model (the target's
depth halved: ×2 fewer parameters, or its width halved: ×4 fewer in the blocks) for the first part of
the same steps, grow it into the target with the runtime's own MSG operator (`grow_sharded`, Adam's
moments carried, the mask ramped), and train on. Every run of a seed sees the same batches in the same
order (one sampler state carried across the growth, as `flmplan run` carries it) with the same batch
size, the runtime's optimizer and step (`ParallelModel.train_batch`), and a constant learning rate
after warm-up (re-warmed after a growth), so that two runs' losses at the same token count are
comparable at every point, not only at the end of a cosine.

Held-out loss (the last 5 % of the data, never trained on) is measured every `eval_every` steps.
From it, per grown run:
- the speed-up in Du et al. 2024's convention: FLOPs the scratch run took to reach its final loss over
  the FLOPs the grown run took to reach it (its small steps at the small model's FLOPs), minus one;
- its scratch-equivalent tokens: at each point after the growth, the tokens at which the scratch run
  had the same held-out loss. Equal-loss continuation with a token efficiency η says they grow as
  D_eq + η·(D − D_growth) (planner/growth/loss_law.py); the slope over every pair is η, with its standard error
  from a bootstrap over pairs, and one pair held out is predicted from the others.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from planner.errors import FlmplanError
from planner.model.flops import model_flops_per_token
from planner.model.optimizer import MAX_GRAD_NORM
from planner.model.specs import Layout
from planner.plan.plan_file import FIRST_WARMUP_STEPS
from runtime import checkpoint
from runtime.data.corpus import Corpus, load_corpus
from runtime.data.loader import Sampler
from runtime.evaluation.held_out import EVAL_SHARE, held_out, held_out_loss
from runtime.growth.msg import apply_masks, grow_sharded
from runtime.model.decoder import Decoder, DecoderConfig
from runtime.parallel.optim import make_optimizer, set_lr
from runtime.parallel.parallelize import make_mesh, parallelize

EVAL_SEQUENCES = 32          # per evaluation; a run evaluates `evaluations` times, not once as a proxy does


@dataclass(frozen=True)
class PairShape:
    """The target every run of a seed reaches, and how the experiment is run."""

    hidden: int = 128
    layers: int = 4
    head_dim: int = 16
    seq: int = 64
    batch: int = 16
    steps: int = 300
    lr: float = 3e-3
    grow_steps: int = 20
    rewarm_steps: int = 5
    evaluations: int = 30            # held-out losses per run, evenly spaced

    @property
    def eval_every(self) -> int:
        return max(1, self.steps // self.evaluations)

    def target(self, vocab: int) -> DecoderConfig:
        return self.config(self.hidden, self.layers, vocab)

    def config(self, hidden: int, layers: int, vocab: int) -> DecoderConfig:
        return DecoderConfig(layers=layers, hidden=hidden, heads=hidden // self.head_dim, ffn=4 * hidden, vocab=vocab,
                             seq=self.seq)

    def small(self, dim: str, vocab: int) -> DecoderConfig:
        """The target with its depth ("depth": ×2 fewer parameters), its width ("width": ×4 fewer in the
        blocks) or both ("both": ×8) halved."""
        hidden = self.hidden // 2 if dim in ("width", "both") else self.hidden
        layers = self.layers // 2 if dim in ("depth", "both") else self.layers
        return self.config(hidden, layers, vocab)


def _process_group(folder: Path) -> bool:
    """The runtime's growth reads a DCP checkpoint, which needs a process group: one process, gloo.
    Whether this call made it (and so must end it)."""
    if dist.is_initialized():
        return False
    dist.init_process_group("gloo", init_method=f"file://{folder / 'pg-store'}", rank=0, world_size=1)
    return True


def _build(cfg: DecoderConfig, shape: PairShape, seed: int, meta: bool = False):
    torch.manual_seed(seed)
    layout = Layout(tp=1, pp=1, dp=1, micro_batch=shape.batch, global_batch=shape.batch)
    if meta:
        with torch.device("meta"):
            model = Decoder(cfg)
    else:
        model = Decoder(cfg)
    pm = parallelize(model, layout, make_mesh(layout, "cpu"), torch.device("cpu"), seed=seed)
    return pm, make_optimizer(pm.chunks[0], shape.lr)


def train_run(shape: PairShape, corpus: Corpus, held: torch.Tensor, seed: int, small: DecoderConfig | None,
              grow_at: int, folder: Path) -> dict:
    """One run: from scratch (`small` None), or `small` for `grow_at` steps, then grown into the target.
    Returns its held-out curve: tokens, FLOPs and loss at every evaluation."""
    target = shape.target(corpus.vocab)
    sampler = Sampler(corpus, seq=shape.seq, seed=seed, holdout=EVAL_SHARE)
    cfg = small if small is not None else target
    pm, opt = _build(cfg, shape, seed)
    model, growth, stage_start, warmup = pm.chunks[0], None, 0, min(FIRST_WARMUP_STEPS, shape.steps // 5)
    tokens_per_step = shape.batch * shape.seq
    flops_done, curve = 0.0, []
    for step in range(shape.steps):
        if small is not None and step == grow_at:
            tag = folder / "ckpt"
            checkpoint.save(tag, "small", [model], [opt], {"global_step": step})
            pm, opt = _build(target, shape, seed + 1, meta=True)
            growth = grow_sharded(pm.chunks, [opt], tag / "small", cfg, shape.grow_steps)
            model, cfg, stage_start, warmup = pm.chunks[0], target, step, shape.rewarm_steps
        if growth is not None:
            apply_masks(model, growth, growth.value(step - stage_start))
        # Constant rate after a linear warm-up (re-warmed after the growth): curves comparable at every point.
        k = step - stage_start
        set_lr(opt, shape.lr * min(1.0, (k + 1) / warmup))
        x, y = sampler.batch(shape.batch, 0, 1)
        loss = pm.train_batch(x, y)
        pm.clip_and_unscale(MAX_GRAD_NORM)
        opt.step()
        opt.zero_grad(set_to_none=True)
        flops_done += model_flops_per_token(cfg) * tokens_per_step
        if not math.isfinite(float(loss)):
            raise FlmplanError(f"A proxy diverged at step {step} (loss {float(loss)}); lower --lr.")
        if (step + 1) % shape.eval_every == 0 or step + 1 == shape.steps:
            curve.append({"step": step + 1, "tokens": (step + 1) * tokens_per_step, "flops": flops_done,
                          "loss": held_out_loss(model, held, torch.device("cpu")), "train_loss": float(loss)})
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "curve.jsonl", "w") as f:
        for point in curve:
            f.write(json.dumps(point) + "\n")
    return {"curve": curve, "params": cfg.params(), "small_params": small.params() if small else None,
            "grow_at_tokens": grow_at * tokens_per_step if small is not None else None}


def _reach(curve: list[dict], target: float, key: str) -> float | None:
    """The `key` (tokens or FLOPs) at which a held-out curve first falls to `target`, interpolated."""
    for a, b in zip([None, *curve[:-1]], curve, strict=True):
        if b["loss"] <= target:
            if a is None or a["loss"] == b["loss"]:
                return b[key]
            f = (a["loss"] - target) / (a["loss"] - b["loss"])
            return a[key] + f * (b[key] - a[key])
    return None


def scratch_tokens_at(scratch: list[dict], loss: float) -> float:
    """The tokens at which the scratch run's held-out loss (made monotone: its running minimum) was
    `loss`; beyond its end, extrapolated on the log-log slope of its last half."""
    tokens = np.array([p["tokens"] for p in scratch], dtype=float)
    best = np.minimum.accumulate(np.array([p["loss"] for p in scratch]))
    if loss >= best[0]:
        return float(tokens[0] * (best[0] / loss))
    below = np.nonzero(best <= loss)[0]
    if len(below):
        i = below[0]
        f = (best[i - 1] - loss) / max(best[i - 1] - best[i], 1e-12)
        return float(tokens[i - 1] + f * (tokens[i] - tokens[i - 1]))
    half = len(tokens) // 2
    slope = np.polyfit(np.log(tokens[half:]), np.log(best[half:]), 1)[0]
    return float(tokens[-1] * (loss / best[-1]) ** (1 / slope)) if slope < 0 else math.inf


def pair_figures(grown: dict, scratch: dict) -> dict:
    """Speed-up (FLOPs and tokens to the scratch run's final loss) and the scratch-equivalent tokens
    after the growth, for one grown run against its seed's scratch run."""
    final = scratch["curve"][-1]["loss"]
    flops_reach, tokens_reach = _reach(grown["curve"], final, "flops"), _reach(grown["curve"], final, "tokens")
    start = grown["grow_at_tokens"]
    after = [p for p in grown["curve"] if p["tokens"] > start]
    equivalent = [{"tokens_after": p["tokens"] - start, "scratch_tokens": scratch_tokens_at(scratch["curve"],
                                                                                            p["loss"])}
                  for p in after]
    return {"reached": flops_reach is not None,
            "speedup_flops": scratch["curve"][-1]["flops"] / flops_reach - 1 if flops_reach else None,
            "speedup_tokens": scratch["curve"][-1]["tokens"] / tokens_reach - 1 if tokens_reach else None,
            "final_gap": grown["curve"][-1]["loss"] - final, "equivalent": equivalent}


def fit_efficiency(pairs: list[dict], draws: int = 200, seed: int = 0) -> dict:
    """η (slope of scratch-equivalent tokens on tokens after the growth; each pair its own intercept,
    its D_eq) over the pairs, its standard error from a bootstrap over pairs."""
    def slope(chosen: list[dict]) -> float:
        xs, ys = [], []
        for p in chosen:
            x = np.array([e["tokens_after"] for e in p["equivalent"]], dtype=float)
            y = np.array([e["scratch_tokens"] for e in p["equivalent"]], dtype=float)
            keep = np.isfinite(y)
            xs.append(x[keep] - x[keep].mean())
            ys.append(y[keep] - y[keep].mean())
        x, y = np.concatenate(xs), np.concatenate(ys)
        return float((x @ y) / (x @ x)) if x @ x > 0 else math.nan

    eta = slope(pairs)
    if not math.isfinite(eta):
        raise FlmplanError("No grown run was compared with its scratch run after the growth (too few steps after "
                           "it); grow earlier or train longer.")
    rng = np.random.default_rng(seed)
    boot = [slope([pairs[i] for i in rng.integers(0, len(pairs), len(pairs))]) for _ in range(draws)]
    boot = [b for b in boot if math.isfinite(b)]
    return {"token_efficiency": eta, "error": float(np.std(boot, ddof=1)) if len(boot) > 1 else math.nan,
            "pairs": len(pairs),
            "method": f"least squares over the pairs' scratch-equivalent tokens (an intercept each), standard "
                      f"error from {draws} bootstrap draws of the pairs"}


def predict_speedup(pair: dict, grown: dict, scratch: dict, eta: float) -> float | None:
    """A held-out pair's FLOPs speed-up predicted from η and its own point of equal loss at the growth:
    it reaches the scratch run's final tokens D when D_eq + η·(D_after) = D."""
    first = pair["equivalent"][0]
    d_eq = first["scratch_tokens"] - eta * first["tokens_after"]
    final_tokens = scratch["curve"][-1]["tokens"]
    tokens_after = (final_tokens - d_eq) / eta
    start = grown["grow_at_tokens"]
    per_token_small = grown["curve"][0]["flops"] / grown["curve"][0]["tokens"]
    per_token_target = scratch["curve"][-1]["flops"] / final_tokens
    flops = start * per_token_small + tokens_after * per_token_target
    return scratch["curve"][-1]["flops"] / flops - 1


def run_pairs(shape: PairShape, points: list[float], dims: list[str], seeds: list[int], out: Path,
              data: list[str] | None = None, log=print) -> dict:
    """Every (seed: scratch, and dim × growth point: grown) run, then the figures and the fit."""
    if not points or any(not 0 < p < 1 for p in points):
        raise FlmplanError("--points are shares of the steps at which to grow, each between 0 and 1.")
    if shape.layers % 2 or shape.hidden % (2 * shape.head_dim):
        raise FlmplanError(f"The target ({shape.layers} layers × {shape.hidden}) must halve into a smaller model: "
                           f"an even number of layers and a width that is a multiple of {2 * shape.head_dim}.")
    if len(dims) * len(points) * len(seeds) < 3:
        raise FlmplanError("Grow versus scratch needs at least three grown runs: one is held out of the fit.")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    corpus = load_corpus(data)
    held = held_out(corpus, shape.seq, EVAL_SEQUENCES)
    with tempfile.TemporaryDirectory() as tmp:
        made_group = _process_group(Path(tmp))
        runs, pairs = {}, []
        for seed in seeds:
            log(f"seed {seed}: the target from scratch")
            scratch = train_run(shape, corpus, held, seed, None, 0, out / f"seed{seed}-scratch")
            runs[f"seed{seed}-scratch"] = scratch
            for dim in dims:
                for point in points:
                    at = max(1, round(point * shape.steps))
                    name = f"seed{seed}-{dim}-at{at}"
                    log(f"seed {seed}: grown in {dim} at step {at}")
                    grown = train_run(shape, corpus, held, seed, shape.small(dim, corpus.vocab), at, out / name)
                    runs[name] = grown
                    pairs.append({"name": name, "seed": seed, "dim": dim, "grow_at_step": at,
                                  "factor": scratch["params"] / grown["small_params"], **pair_figures(grown, scratch)})
        if made_group:
            dist.destroy_process_group()
    kept = pairs[-1]
    fit = fit_efficiency(pairs[:-1])
    scratch_of = runs[f"seed{kept['seed']}-scratch"]
    predicted = predict_speedup(kept, runs[kept["name"]], scratch_of, fit["token_efficiency"])
    lo = predict_speedup(kept, runs[kept["name"]], scratch_of, fit["token_efficiency"] - fit["error"])
    hi = predict_speedup(kept, runs[kept["name"]], scratch_of, fit["token_efficiency"] + fit["error"])
    result = {"kind": "flmplan-growth-pairs", "shape": asdict(shape), "data": corpus.text,
              "target_params": shape.target(corpus.vocab).params(), "seeds": seeds, "points": points, "dims": dims,
              "convention": "speed-up = FLOPs of the scratch run to its final held-out loss / FLOPs of the grown run "
                            "to the same loss (small steps at the small model's FLOPs) − 1 (Du et al. 2024)",
              "pairs": pairs, "fit": {**fit, "held_out": kept["name"]},
              "held_out": {"name": kept["name"], "measured": kept["speedup_flops"], "predicted": predicted,
                           "interval": sorted([lo, hi]),
                           "within_error": kept["speedup_flops"] is not None
                           and min(lo, hi) <= kept["speedup_flops"] <= max(lo, hi)}}
    (out / "pairs.json").write_text(json.dumps(result, indent=1))
    return result
