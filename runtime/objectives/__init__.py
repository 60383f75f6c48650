"""Training objectives besides language modelling: FreeLM's teacher signal (freelm.py), propositions
the model judges true or false at a [cls] token every K-th step.

May import: the planner, runtime.hooks, runtime.model, runtime.data, runtime.checkpoint,
runtime.evaluation. No torch at import time (`flmplan simulate` checks teacher files without it).
"""
