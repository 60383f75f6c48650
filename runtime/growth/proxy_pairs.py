"""Grow versus scratch, measured: proxy pairs that say what a token after a growth is worth.

For one target shape, one run trains it from scratch; others train a smaller model for the first part
of the same steps, grow it into the target and train on. The operators: the runtime's own MSG
(`grow_sharded`: the target's depth halved, ×2 fewer parameters; its width halved, ×4 fewer in the
blocks; or both), Adam's moments carried and the mask ramped; and, as a control, G_stack (Du et al.
2024): the half-depth model's whole stack repeated, at full strength at once. Every run of a seed sees
the same batches in the same order (one sampler state carried across the growth, as `flmplan run`
carries it), with µP's per-width rates (so one base rate serves both sizes, runtime/model/mup.py) and
a warm-up–stable–decay schedule (Hägele et al. 2024): a constant rate (re-warmed after a growth), so
two runs' losses at the same token count are comparable at every point of the stable phase, then a
linear cooldown over the last `cooldown` share of the steps, so the final losses are those of decayed
runs, which is what a scaling law describes.

Held-out loss (the last 5 % of the data, never trained on) is measured every `eval_every` steps, and
per sequence at the end, so a final gap comes with its paired standard error. Per grown run:
- the speed-up in Du et al. 2024's convention over the stable phase: FLOPs the scratch run took to reach
  its last stable loss over the FLOPs the grown run took to reach it (its small steps at the small
  model's FLOPs), minus one; a run that never reaches it is censored: its speed-up is below a bound;
- its scratch-equivalent tokens: at each stable point after the growth, the tokens at which the
  scratch run had the same held-out loss. Equal-loss continuation with a token efficiency η says they
  grow as D_eq + η·(D − D_growth) (planner/growth/loss_law.py); the slope is η. It is fitted per
  operator (the plan's, MSG, apart from the control), per seed, and its error is the seeds' scatter
  (pairs of one seed share a scratch run and a data order); one MSG pair is held out and predicted.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
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
from runtime.evaluation.held_out import EVAL_SHARE, held_out, held_out_loss, held_out_losses
from runtime.growth.msg import apply_masks, grow_sharded
from runtime.model.decoder import Decoder, DecoderConfig
from runtime.parallel.optim import make_optimizer, set_lr
from runtime.parallel.parallelize import make_mesh, parallelize

# What grows, and by which operator: MSG's three (the plan's operator) and G_stack, the control.
DIMS = {"depth": "MSG", "width": "MSG", "both": "MSG", "stack": "G_stack"}


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
    eval_sequences: int = 128        # held-out sequences per evaluation
    cooldown: float = 0.2            # the share of the steps the rate decays over, linearly to 0
    device: str = "cpu"

    @property
    def eval_every(self) -> int:
        return max(1, self.steps // self.evaluations)

    @property
    def stable_steps(self) -> int:
        """Steps before the cooldown: the phase in which runs are compared point by point."""
        return self.steps - round(self.steps * self.cooldown)

    def rate(self, step: int, stage_start: int, warmup: int) -> float:
        """Warm-up (re-warmed after a growth), constant, then a linear decay to 0 over the cooldown."""
        r = self.lr * min(1.0, (step - stage_start + 1) / warmup)
        if step >= self.stable_steps:
            r *= (self.steps - step) / (self.steps - self.stable_steps)
        return r

    def target(self, vocab: int) -> DecoderConfig:
        return self.config(self.hidden, self.layers, vocab)

    def config(self, hidden: int, layers: int, vocab: int) -> DecoderConfig:
        """µP with the target as its base: the target trains at `lr`, a narrower model at µP's rates."""
        return DecoderConfig(layers=layers, hidden=hidden, heads=hidden // self.head_dim, ffn=4 * hidden, vocab=vocab,
                             seq=self.seq, mup=True, mup_base_width=self.hidden)

    def small(self, dim: str, vocab: int) -> DecoderConfig:
        """The target with its depth ("depth", "stack": ×2 fewer parameters), its width ("width": ×4
        fewer in the blocks) or both ("both": ×8) halved."""
        hidden = self.hidden // 2 if dim in ("width", "both") else self.hidden
        layers = self.layers // 2 if dim in ("depth", "both", "stack") else self.layers
        return self.config(hidden, layers, vocab)


def _process_group(folder: Path, device: str) -> bool:
    """The runtime's growth reads a DCP checkpoint, which needs a process group: one process (gloo on
    the CPU, NCCL beside it on a GPU). Whether this call made it (and so must end it)."""
    if dist.is_initialized():
        return False
    backend = "gloo" if device == "cpu" else "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend, init_method=f"file://{folder / 'pg-store'}", rank=0, world_size=1)
    return True


def _build(cfg: DecoderConfig, shape: PairShape, seed: int, meta: bool = False):
    torch.manual_seed(seed)
    layout = Layout(tp=1, pp=1, dp=1, micro_batch=shape.batch, global_batch=shape.batch)
    device = torch.device(shape.device)
    with torch.device("meta" if meta else "cpu"):
        model = Decoder(cfg)
    pm = parallelize(model, layout, make_mesh(layout, device.type), device, seed=seed)
    return pm, make_optimizer(pm.chunks[0], shape.lr)


def train_run(shape: PairShape, corpus: Corpus, held: torch.Tensor, seed: int, small: DecoderConfig | None,
              grow_at: int, folder: Path, dim: str = "depth") -> dict:
    """One run: from scratch (`small` None), or `small` for `grow_at` steps, then grown into the target
    by `dim`'s operator. Returns its held-out curve (tokens, FLOPs and loss at every evaluation, each
    marked stable or cooldown) and its final per-sequence held-out losses."""
    t0 = time.perf_counter()
    device = torch.device(shape.device)
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
            stack = DIMS[dim] == "G_stack"
            growth = grow_sharded(pm.chunks, [opt], tag / "small", cfg, 0 if stack else shape.grow_steps,
                                  order="stacked" if stack else "interleaved")
            model, cfg, stage_start, warmup = pm.chunks[0], target, step, shape.rewarm_steps
        if growth is not None:
            apply_masks(model, growth, growth.value(step - stage_start))
        set_lr(opt, shape.rate(step, stage_start, warmup))
        x, y = sampler.batch(shape.batch, 0, 1)
        loss = pm.train_batch(x.to(device), y.to(device))
        pm.clip_and_unscale(MAX_GRAD_NORM)
        opt.step()
        opt.zero_grad(set_to_none=True)
        flops_done += model_flops_per_token(cfg) * tokens_per_step
        if not math.isfinite(float(loss)):
            raise FlmplanError(f"A proxy diverged at step {step} (loss {float(loss)}); lower --lr.")
        done = step + 1
        if done % shape.eval_every == 0 or done in (shape.stable_steps, shape.steps):
            curve.append({"step": done, "tokens": done * tokens_per_step, "flops": flops_done,
                          "phase": "stable" if done <= shape.stable_steps else "cooldown",
                          "loss": held_out_loss(model, held, device), "train_loss": float(loss)})
    final = held_out_losses(model, held, device)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "curve.jsonl", "w") as f:
        for point in curve:
            f.write(json.dumps(point) + "\n")
    return {"curve": curve, "final_losses": final, "params": cfg.params(),
            "small_params": small.params() if small else None,
            "grow_at_tokens": grow_at * tokens_per_step if small is not None else None,
            "seconds": time.perf_counter() - t0, "tokens": shape.steps * tokens_per_step}


def _stable(run: dict) -> list[dict]:
    return [p for p in run["curve"] if p.get("phase", "stable") == "stable"]


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
    """One grown run against its seed's scratch run: the stable phase's speed-up (FLOPs and tokens to
    the scratch run's last stable loss; censored, with its bound, where the grown run never gets there),
    the scratch-equivalent tokens after the growth, and the decayed runs' final gap with its paired
    standard error."""
    s_curve, g_curve = _stable(scratch), _stable(grown)
    target = s_curve[-1]["loss"]
    flops_reach, tokens_reach = _reach(g_curve, target, "flops"), _reach(g_curve, target, "tokens")
    start = grown["grow_at_tokens"]
    equivalent = [{"tokens_after": p["tokens"] - start, "scratch_tokens": scratch_tokens_at(s_curve, p["loss"])}
                  for p in g_curve if p["tokens"] > start]
    diff = (grown["final_losses"] - scratch["final_losses"]).double()
    gap, se = float(diff.mean()), float(diff.std() / math.sqrt(len(diff))) if len(diff) > 1 else math.nan
    return {"reached": flops_reach is not None,
            "speedup_flops": s_curve[-1]["flops"] / flops_reach - 1 if flops_reach else None,
            "speedup_tokens": s_curve[-1]["tokens"] / tokens_reach - 1 if tokens_reach else None,
            # Not reached within its stable FLOPs: it needs more, so its speed-up is below this.
            "speedup_bound": None if flops_reach else s_curve[-1]["flops"] / g_curve[-1]["flops"] - 1,
            "final_gap": gap, "final_gap_se": se, "final_gap_resolved": bool(abs(gap) > 2 * se),
            "equivalent": equivalent}


def _slope(chosen: list[dict]) -> float:
    """Least squares of scratch-equivalent tokens on tokens after the growth, each pair its own
    intercept (its D_eq)."""
    xs, ys = [], []
    for p in chosen:
        x = np.array([e["tokens_after"] for e in p["equivalent"]], dtype=float)
        y = np.array([e["scratch_tokens"] for e in p["equivalent"]], dtype=float)
        keep = np.isfinite(y)
        xs.append(x[keep] - x[keep].mean())
        ys.append(y[keep] - y[keep].mean())
    x, y = np.concatenate(xs), np.concatenate(ys)
    return float((x @ y) / (x @ x)) if x @ x > 0 else math.nan


def fit_efficiency(pairs: list[dict], draws: int = 200, seed: int = 0) -> dict:
    """η over the pairs, and η per seed. Its error is the seeds' scatter (standard deviation of the
    per-seed η over √seeds): the pairs of one seed share its scratch run and data order, so they are
    not independent. With one seed, a bootstrap over its pairs, which says less, and says so."""
    eta = _slope(pairs)
    if not math.isfinite(eta):
        raise FlmplanError("No grown run was compared with its scratch run after the growth (too few steps after "
                           "it); grow earlier or train longer.")
    seeds = sorted({p["seed"] for p in pairs})
    per_seed = {str(s): _slope([p for p in pairs if p["seed"] == s]) for s in seeds}
    finite = [v for v in per_seed.values() if math.isfinite(v)]
    if len(finite) >= 2:
        err = float(np.std(finite, ddof=1) / math.sqrt(len(finite)))
        method = f"least squares over the pairs (an intercept each); error: the scatter of η over {len(finite)} seeds"
    else:
        rng = np.random.default_rng(seed)
        boot = [_slope([pairs[i] for i in rng.integers(0, len(pairs), len(pairs))]) for _ in range(draws)]
        boot = [b for b in boot if math.isfinite(b)]
        err = float(np.std(boot, ddof=1)) if len(boot) > 1 else math.nan
        method = (f"least squares over the pairs of one seed; error from {draws} bootstrap draws of its pairs, "
                  "which share a scratch run and data order (seed-to-seed scatter not measured)")
    return {"token_efficiency": eta, "error": err, "pairs": len(pairs), "seeds": len(seeds), "per_seed": per_seed,
            "method": method}


def predict_speedup(pair: dict, grown: dict, scratch: dict, eta: float) -> float:
    """A held-out pair's stable-phase FLOPs speed-up predicted from η and its own point of equal loss at
    the growth: it reaches the scratch run's last stable tokens D when D_eq + η·(D_after) = D."""
    s_last = _stable(scratch)[-1]
    first = pair["equivalent"][0]
    d_eq = first["scratch_tokens"] - eta * first["tokens_after"]
    tokens_after = (s_last["tokens"] - d_eq) / eta
    start = grown["grow_at_tokens"]
    per_token_small = grown["curve"][0]["flops"] / grown["curve"][0]["tokens"]
    per_token_target = s_last["flops"] / s_last["tokens"]
    return s_last["flops"] / (start * per_token_small + tokens_after * per_token_target) - 1


def _held_out_check(kept: dict, runs: dict, fit: dict) -> dict:
    """The held-out pair's speed-up predicted at η and at η ± its error, against what it measured; a
    censored pair (it never reached the scratch loss) is a bound, consistent or not, not a miss."""
    grown, scratch = runs[kept["name"]], runs[f"seed{kept['seed']}-scratch"]
    eta, err = fit["token_efficiency"], fit["error"] if math.isfinite(fit["error"]) else 0.0
    predicted = predict_speedup(kept, grown, scratch, eta)
    lo, hi = sorted(predict_speedup(kept, grown, scratch, e) for e in (max(eta - err, 1e-3), eta + err))
    if kept["reached"]:
        verdict = "within" if lo <= kept["speedup_flops"] <= hi else "outside"
    else:
        verdict = "censored, consistent" if lo < kept["speedup_bound"] else "censored, inconsistent"
    return {"name": kept["name"], "measured": kept["speedup_flops"], "bound": kept["speedup_bound"],
            "predicted": predicted, "interval": [lo, hi], "verdict": verdict,
            "within_error": None if not kept["reached"] else verdict == "within"}


def _check(shape: PairShape, points: list[float], dims: list[str], seeds: list[int]) -> None:
    if not points or any(not 0 < p < 1 for p in points):
        raise FlmplanError("--points are shares of the steps at which to grow, each between 0 and 1.")
    if any(p * shape.steps >= shape.stable_steps for p in points):
        raise FlmplanError(f"Every growth must come before the cooldown (step {shape.stable_steps} of {shape.steps}); "
                           "grow earlier or shorten --cooldown.")
    if shape.layers % 2 or shape.hidden % (2 * shape.head_dim):
        raise FlmplanError(f"The target ({shape.layers} layers × {shape.hidden}) must halve into a smaller model: "
                           f"an even number of layers and a width that is a multiple of {2 * shape.head_dim}.")
    if sum(DIMS[d] == "MSG" for d in dims) * len(points) * len(seeds) < 3:
        raise FlmplanError("Grow versus scratch needs at least three MSG grown runs (the plan's operator; stack is "
                           "the control): one is held out of the fit.")
    if shape.device.startswith("cuda") and not torch.cuda.is_available():
        raise FlmplanError("--device cuda was asked for, but torch sees no GPU here.")


def run_pairs(shape: PairShape, points: list[float], dims: list[str], seeds: list[int], out: Path,
              data: list[str] | None = None, log=print) -> dict:
    """Every (seed: scratch, and dim × growth point: grown) run, then the figures and the fits: η of
    MSG (the plan's operator, one pair held out) and of the G_stack control, each from its own pairs."""
    _check(shape, points, dims, seeds)
    out.mkdir(parents=True, exist_ok=True)
    if shape.device == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    corpus = load_corpus(data)
    held = held_out(corpus, shape.seq, shape.eval_sequences)
    with tempfile.TemporaryDirectory() as tmp:
        made_group = _process_group(Path(tmp), shape.device)
        runs, pairs = {}, []
        for seed in seeds:
            log(f"seed {seed}: the target from scratch")
            scratch = train_run(shape, corpus, held, seed, None, 0, out / f"seed{seed}-scratch")
            runs[f"seed{seed}-scratch"] = scratch
            for dim in dims:
                for point in points:
                    at = max(1, round(point * shape.steps))
                    name = f"seed{seed}-{dim}-at{at}"
                    log(f"seed {seed}: grown in {dim} ({DIMS[dim]}) at step {at}")
                    grown = train_run(shape, corpus, held, seed, shape.small(dim, corpus.vocab), at, out / name, dim)
                    runs[name] = grown
                    pairs.append({"name": name, "seed": seed, "dim": dim, "operator": DIMS[dim], "grow_at_step": at,
                                  "factor": scratch["params"] / grown["small_params"], **pair_figures(grown, scratch)})
        if made_group:
            dist.destroy_process_group()
    msg = [p for p in pairs if p["operator"] == "MSG"]
    kept = msg[-1]
    fits = {"MSG": {**fit_efficiency(msg[:-1]), "operator": "MSG", "held_out": kept["name"]}}
    stack = [p for p in pairs if p["operator"] == "G_stack"]
    if len(stack) >= 2:
        fits["G_stack"] = {**fit_efficiency(stack), "operator": "G_stack"}
    seconds = sum(r["seconds"] for r in runs.values())
    result = {"kind": "flmplan-growth-pairs", "shape": asdict(shape), "data": corpus.text,
              "target_params": shape.target(corpus.vocab).params(), "seeds": seeds, "points": points, "dims": dims,
              "convention": "speed-up = FLOPs of the scratch run to its last stable held-out loss / FLOPs of the grown "
                            "run to the same loss (small steps at the small model's FLOPs) − 1 (Du et al. 2024)",
              "pairs": pairs, "fit": fits["MSG"], "fits": fits, "held_out": _held_out_check(kept, runs, fits["MSG"]),
              "eval": {"sequences": len(held), "tokens": len(held) * shape.seq},
              "cost": {"device": shape.device, "runs": len(runs), "seconds": seconds,
                       "tokens_per_second": sum(r["tokens"] for r in runs.values()) / seconds}}
    (out / "pairs.json").write_text(json.dumps(result, indent=1))
    return result
