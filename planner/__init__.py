"""flmplan's planner (decide): what a model costs, which layout and growth schedule a budget buys,
how the run goes, and what leaves the planner (plan file, advice, reports, exports).

Pure Python: it never imports torch, `runtime/`, `profiles/` or the front end, so planning starts fast
and runs anywhere. Its rooms, lowest first; each may import only the rooms before it
(tests/test_layers.py, docs/architecture.md): errors, jsonio → model → cost → layout → sim →
growth → plan → export → report.
"""
