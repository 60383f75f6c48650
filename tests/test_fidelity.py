"""The cost model against the 36 published rows the project carries (benchmarks/fidelity.py), with
margins that have reasons.

The derived profiles' fitted values come from the 25 Megatron-LM and llm-foundry rows (`python -m
profiles.derived --fit`); the 11 production rows (FLM-101B's, Llama 3 405B's and four more runs) are in no
fit. What is tested,
and why:
- No source is biased: each fitted source's mean signed error lies within two standard errors of zero.
  The rows' own scatter says how far a mean can stray by chance; beyond it, a term is missing.
- No row is an outlier: every fitted row lies within three times the fit's rms error. Beyond that a row
  is in a regime the model does not describe.
- FLM-101B, held out: the model is optimistic (the facts its sources leave open can only add time), and
  the open facts at their costliest move it towards the paper. How optimistic is bounded by what the
  evidence allows: the paper's own inconsistency (its 51B stage's throughput and days disagree by
  12 %) plus three times the fitted rows' rms error.
"""

import json
import math

from planner.layout.case import published_cases
from planner.layout.search import compare_to_published

# FLM-101B's 51B stage: its stated 160 TFLOP/s and its 5.37 days for the stage's tokens are 12 % apart.
PAPER_INCONSISTENCY = 0.12


def rows() -> dict[str, dict]:
    return {c.name: compare_to_published(c) for c in published_cases()}


def fitted_errors(table: dict[str, dict]) -> dict[str, float]:
    from profiles.derived import CALIBRATION

    fitted = json.loads(CALIBRATION.read_text())["rows"]
    return {name: table[name]["error"] for name in fitted}


def flm_bound(table: dict[str, dict]) -> float:
    errors = list(fitted_errors(table).values())
    return PAPER_INCONSISTENCY + 3 * math.sqrt(sum(e * e for e in errors) / len(errors))


def test_no_source_is_biased_and_no_row_is_an_outlier():
    table = rows()
    errors = fitted_errors(table)
    assert len(table) == 36 and len(errors) == 25
    rms = math.sqrt(sum(e * e for e in errors.values()) / len(errors))
    for source in ("megatron", "llmfoundry"):
        mine = [e for name, e in errors.items() if name.startswith(source)]
        mean = sum(mine) / len(mine)
        sd = math.sqrt(sum((e - mean) ** 2 for e in mine) / (len(mine) - 1))
        assert abs(mean) <= 2 * sd / math.sqrt(len(mine)), (source, mean, sd)
    for name, e in errors.items():
        assert abs(e) <= 3 * rms, (name, e, rms)


def test_flm101b_held_out_is_optimistic_within_what_the_evidence_allows():
    table = rows()
    bound = flm_bound(table)
    flm = {name: r for name, r in table.items() if name.startswith("flm101b")}
    assert len(flm) == 3
    for name, r in flm.items():
        assert 0 < r["error"] <= bound, (name, r["error"], bound)
        # The open fact at its costliest (dropout 0.1; the era sets FlashAttention v1) costs time: less optimistic.
        assert r["error_costliest"] < r["error"], name


def test_production_rows_take_their_eras_defaults_not_the_fastest():
    """GLM-130B (May 2022, DeepSpeed) states neither its attention kernel nor its overlaps: it is costed as
    its era ran (unfused attention, reduction after the flush, no interleaving), which is slower than the
    same run would be today, and the comparison says which defaults it used."""
    case = next(c for c in published_cases() if c.name.startswith("glm-130b"))
    then = compare_to_published(case)
    assert then["era_defaults"]["attention"] == "unfused" and then["era_defaults"]["interleave"] == 1
    assert then["era_defaults"]["overlap_grad_reduce"] is False
    today = compare_to_published(case.model_copy(update={"era": "2024-06"}))
    assert today["era_defaults"]["attention"] == "flash" and today["predicted"] > then["predicted"]
    # Whatever the metric, speed_error is positive where the model is optimistic.
    for r in rows().values():
        faster = r["predicted"] < r["published"] if r["metric"] == "iteration_s" else r["predicted"] > r["published"]
        assert (r["speed_error"] > 0) == faster, r["case"]


def test_llama3_405b_never_fitted_within_8_percent():
    """Issue 43's check beyond the calibration set: Llama 3 405B on 16,384 H100s, its uneven end stages
    and interleaving stated, within ±8 % (it was −10.6 % before the split counted its ends)."""
    row = rows()["llama3-405b-s8192-16384xh100-80gb"]
    assert abs(row["speed_error"]) <= 0.08, row
