"""Training: the `Run` of a plan's stages (trainer.py), what it measures of its steps (meter.py) and
besides them (probes.py), and µTransfer's learning-rate sweep on proxies (lr_sweep.py). The torchrun
entry is runtime/train.py, above this room.

May import: the planner and the runtime's rooms below it, up to runtime.growth.
"""
