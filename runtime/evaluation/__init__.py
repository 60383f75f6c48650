"""Evaluation: FLM-101B's IQ-style tests — task generators (iq_tasks.py) for lm-evaluation-harness
(harness.py) and `flmplan eval` (evaluate.py) — and the held-out loss of proxies (held_out.py).

May import: the planner, runtime.hooks, runtime.model, runtime.data, runtime.checkpoint.
"""

import os

# The suite's data are local JSON lines: Hugging Face's libraries under lm-eval need no network.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
