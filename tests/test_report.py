"""BENCHMARKS.md's generated tables are what their scripts give now: `python benchmarks/report.py --check`
re-runs every cheap benchmark the document carries a table of (timings aside) and compares."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "benchmarks/report.py", "--check", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_every_generated_table_is_current():
    r = check()
    assert r.returncode == 0, r.stderr


def test_a_figure_typed_by_hand_is_caught(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    text = (ROOT / "BENCHMARKS.md").read_text()
    start = text.index("<!-- report:growth-cases -->")
    end = text.index("<!-- /report:growth-cases -->")
    block = text[start:end]
    edited = block.replace("| fitted |", "| fitted (edited) |", 1)
    assert edited != block
    doc.write_text(text[:start] + edited + text[end:])
    r = check("growth-cases", "--doc", str(doc))
    assert r.returncode == 1 and "growth-cases table differs" in r.stderr
