"""`flmplan profile` must run where only torch, numpy, typer and rich exist (the GPU image)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# typer ≥ 0.20 itself needs pydantic, so the CLI check can only block the others; the profiler's
# own modules are checked with pydantic blocked too.
BLOCK = """
import sys
for name in ("simpy", "plotly", "scipy"):
    sys.modules[name] = None          # importing any of them now raises ImportError
from flmplan.cli import app
sys.argv = ["flmplan", "profile", "--help"]
app()
"""

IMPORTS = """
import sys
for name in ("pydantic", "simpy", "plotly", "scipy"):
    sys.modules[name] = None
import profiles.measure, profiles.collectives, profiles.fit, profiles.layer  # noqa
import runtime.model.decoder, runtime.parallel.parallelize, runtime.parallel.optim, runtime.parallel.cores  # noqa
print("ok")
"""


def test_profile_path_imports_nothing_beyond_the_gpu_image():
    r = subprocess.run([sys.executable, "-c", IMPORTS], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-c", BLOCK], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Measure the decoder core" in r.stdout, r.stderr
