"""Calibration against the 28 published runs the project carries (benchmarks/fidelity.py).

Tolerance stated by issue 2: mean |error| ≤ 5 %, max ≤ 10 %, one built-in profile per GPU.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from fidelity import compare

from planner.case import published_cases


def test_published_cases_within_tolerance():
    cases = published_cases()
    assert len(cases) == 28
    errors = [abs(compare(c)["error"]) for c in cases]
    assert sum(errors) / len(errors) <= 0.05
    assert max(errors) <= 0.10
