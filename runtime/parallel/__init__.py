"""Parallelism: a stage's layout applied on a DeviceMesh from outside the model (parallelize.py:
tensor, sequence, pipeline and FSDP data parallelism), the local model and its step (parallel_model.py),
precision (precision.py), the optimizer and learning rate (optim.py), and a CPU rank's cores (cores.py).

May import: the planner and the runtime's rooms below it (hooks, model, data, checkpoint, evaluation,
objectives).
"""
