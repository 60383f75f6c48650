"""Calibration against the 28 published runs the project carries (benchmarks/fidelity.py).

Tolerance: mean |error| ≤ 5 %, max ≤ 10 %, one built-in profile per GPU — met by the 25 runs of
Megatron-LM and llm-foundry. FLM-101B's three stages, costed with the facts their sources state
(flash attention, xPos, the gradient reduction after the backward), miss it: the model is 12–17 %
optimistic and the facts the sources leave open explain at most 2–5 points of it (BENCHMARKS.md
§1, benchmarks/flm_sizing.py). Their bound holds that stated miss from growing.
"""

from planner.case import published_cases
from planner.search import compare_to_published

FLM_MISS = 0.17


def test_published_cases_within_tolerance():
    rows = {c.name: compare_to_published(c) for c in published_cases()}
    assert len(rows) == 28
    errors = [abs(r["error"]) for r in rows.values()]
    assert sum(errors) / len(errors) <= 0.05
    others = [abs(r["error"]) for name, r in rows.items() if not name.startswith("flm101b")]
    assert len(others) == 25 and max(others) <= 0.10
    flm = {name: r for name, r in rows.items() if name.startswith("flm101b")}
    for name, r in flm.items():
        assert 0 < r["error"] <= FLM_MISS, name
        # The open facts at their costliest (FlashAttention v1, dropout 0.1) cost time: less optimistic.
        assert r["error_costliest"] < r["error"], name
