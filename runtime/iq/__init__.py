"""FLM-101B's IQ-style evaluation: task generators (generators.py) for lm-evaluation-harness."""
