"""The derived profiles' fitted values are re-made by code: `python -m profiles.derived --fit` re-fits
them to planner/data/cases.json and writes the calibration record and the profiles; from a clean
checkout that gives the committed files byte for byte."""

import json
from pathlib import Path

import profiles.derived as derived
from planner.layout.case import published_cases
from planner.model.specs import gpu_catalog

DATA = Path(derived.__file__).parent / "data"


def test_the_fit_rebuilds_the_committed_calibration_and_profiles_byte_for_byte(tmp_path):
    record = derived.calibrate()
    written = derived.write_calibration(record, tmp_path / "derived.json")
    assert written.read_bytes() == derived.CALIBRATION.read_bytes()
    paths = derived.write_all(tmp_path, derived.values_of(record))
    assert {p.name for p in paths} == {f"{k}.json" for k in gpu_catalog()}
    for p in paths:
        assert p.read_bytes() == (DATA / p.name).read_bytes(), p.name
    # The record says how: every fitted value with its bounds and start, the rows and their residuals;
    # the production rows are in no fit, and their step-time factors (a plan's model error) are recorded.
    production = {c.name for c in published_cases() if c.kind == "production"}
    assert len(production) == 11 and set(record["rows"]) == set(record["residuals"])
    assert not production & set(record["rows"]) and {r["case"] for r in record["production"]} == production
    for v in record["values"]:
        lo, hi = v["bounds"]
        assert lo <= v["value"] <= hi and lo <= v["start"] <= hi
    profile = json.loads((DATA / "a800-80gb.json").read_text())
    assert any("fitted" in line and "residual over them" in line for line in profile["references"])


def test_leaving_a_row_out_refits_without_it():
    record = derived.fit()
    row = record["rows"][0]
    without = derived.fit(leave_out=(row,), start=derived.values_of(record))
    assert row not in without["rows"] and len(without["rows"]) == len(record["rows"]) - 1
