"""Calibration against the 28 published runs the project carries (benchmarks/fidelity.py).

Tolerance: mean |error| ≤ 5 %, max ≤ 10 %, one built-in profile per GPU.
"""

from planner.case import published_cases
from planner.search import compare_to_published


def test_published_cases_within_tolerance():
    cases = published_cases()
    assert len(cases) == 28
    errors = [abs(compare_to_published(c)["error"]) for c in cases]
    assert sum(errors) / len(errors) <= 0.05
    assert max(errors) <= 0.10
