"""flmplan's runtime (execute): a plan trained with real torch.distributed.

Its rooms, lowest first; each may import only the rooms before it and the planner
(tests/test_layers.py, docs/architecture.md): hooks → model → data → checkpoint → evaluation →
objectives → parallel → growth → training → train (the torchrun entry) → export.
"""
