"""The model's description: its shape and the cluster and layout it runs on (specs.py), the decoder
layer described once (anatomy.py), and what derives from it — FLOPs (flops.py), memory per GPU
(memory.py) — with the training recipe's optimizer constants (optimizer.py).

May import: planner.errors, planner.jsonio. Nothing else of the planner.
"""
