"""FLM-101B's IQ-style evaluation: task generators (generators.py) for lm-evaluation-harness
(harness.py) and `flmplan eval` (evaluate.py)."""

import os

# The suite's data are local JSON lines: Hugging Face's libraries under lm-eval need no network.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
