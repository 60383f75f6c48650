"""What FLM-101B's 2023 software may pay that the cost model does not charge, sized one candidate
at a time on its three stages (issue 18).

Each row changes one fact of the cases in planner/data/cases.json and re-runs the same cost model
(built-in A800 profile); the published figures are 162 / 160 / 165 TFLOP/s per GPU.

    python benchmarks/flm_sizing.py [--json]
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace

from planner.cost.compute import layer_time, logits_time
from planner.cost.device_profile import builtin_profile
from planner.cost.step import device_models
from planner.layout.case import published_cases
from planner.layout.search import compare_to_published, estimate_case
from planner.model.specs import get_gpu

# Megatron-LM's vocabulary-parallel cross-entropy in fp32, element passes of 4 bytes over the
# local logits (counted from megatron/core/tensor_parallel/cross_entropy.py, 2023): forward — cast
# bf16 → fp32 (1.5), max (1), subtract max (2), exp (2), sum (1), divide (2): 9.5; backward —
# softmax − one-hot (2), × grad (2), cast back (1.5): 5.5. The cost model charges 3 and 2.
MEGATRON_CE_PASSES = (9.5, 5.5)
MODEL_CE_PASSES = (3, 2)


def flm_cases():
    return [c for c in published_cases() if c.name.startswith("flm101b-stage")]


def row(label: str, cases) -> dict:
    """One change of facts: the predicted TFLOP/s of each stage and its error against the published one."""
    results = [compare_to_published(c) for c in cases]
    return {"facts": label, "predicted": [r["predicted"] for r in results], "error": [r["error"] for r in results]}


def with_software(case, **facts):
    return case.model_copy(update={"software": case.software.model_copy(update=facts)})


def with_model(case, **fields):
    return case.model_copy(update={"model": replace(case.model, **fields)})


def with_parallel(case, **fields):
    return case.model_copy(update={"parallel": case.parallel.model_copy(update=fields)})


def shares(case) -> str:
    """Where the step goes, and the logits' cross-entropy traffic a Megatron fork adds."""
    est = estimate_case(case).best
    dev, _ = device_models(builtin_profile(case.cluster.gpu))
    lay, m = est.layout, est.model
    lt = layer_time(dev, m, lay, case.software_spec())
    per_mb_layers = -(-m.layers // lay.pp) * (lt.forward + lt.backward)
    elementwise = -(-m.layers // lay.pp) * (lt.mem_fwd + lt.mem_bwd) / per_mb_layers
    attention = (lt.attn_fwd + lt.attn_bwd) / (lt.forward + lt.backward)
    fwd, bwd = logits_time(dev, m, lay)
    ce_elements = lay.micro_batch * m.seq * m.vocab / lay.tp
    extra = sum(dev.memory_bound_s(ce_elements * 4 * (a - b)) for a, b in zip(MEGATRON_CE_PASSES, MODEL_CE_PASSES,
                                                                                 strict=True))
    stage = est.breakdown.compute_s / lay.micro_batches
    return (f"{case.name}: element-wise {elementwise:.1%} and attention {attention:.1%} of the layers' time; "
            f"logits {(fwd + bwd) / stage:.1%} of a stage's micro-batch; Megatron's fp32 cross-entropy would add "
            f"{extra / stage:+.2%}")


def rows() -> list[dict]:
    cases = flm_cases()
    a100 = get_gpu("a100-80gb")
    return [
        row("stated facts: flash attention, xPos, gradients reduced after the backward "
            "(FA version and dropout not stated: its era's FA1, none)", cases),
        row("… with unfused attention instead (the earlier assumption)", [with_software(c, attention="unfused")
                                                                        for c in cases]),
        row("… with FlashAttention v1", [with_software(c, flash_attention=1) for c in cases]),
        row("… with dropout 0.1", [with_software(c, dropout=0.1) for c in cases]),
        row("… with FA v1 and dropout 0.1", [with_software(c, flash_attention=1, dropout=0.1) for c in cases]),
        row("… without xPos (plain rotary)", [with_model(c, position="rotary") for c in cases]),
        row("… with the gradient reduction overlapped", [with_software(c, overlap_grad_reduce=True) for c in cases]),
        row("… micro-batch 1, no interleaving (unpublished fields fixed)",
            [with_parallel(c, micro_batch=1, interleave=1) for c in cases]),
        row("… on A100 NVLink (600 GB/s) instead of the A800's 400 GB/s",
            [c.model_copy(update={"cluster": c.cluster.model_copy(update={"gpu": a100.key})}) for c in cases]),
        row("FA v1, dropout 0.1, micro-batch 1, no interleaving (everything open at its costliest)",
            [with_parallel(with_software(c, flash_attention=1, dropout=0.1), micro_batch=1, interleave=1)
             for c in cases]),
    ]


def main() -> None:
    result = {"rows": rows(), "shares": [shares(c) for c in flm_cases()]}
    if "--json" in sys.argv:
        print(json.dumps(result, indent=1))
        return
    print("| facts | 16B | 51B | 101B |\n|---|---:|---:|---:|")
    for r in result["rows"]:
        cells = [f"{p:6.1f} ({e:+6.1%})" for p, e in zip(r["predicted"], r["error"], strict=True)]
        print(f"| {r['facts']} | " + " | ".join(cells) + " |")
    print()
    print("\n".join(result["shares"]))


if __name__ == "__main__":
    main()
