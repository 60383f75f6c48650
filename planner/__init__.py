"""flmplan's planner: specs, the cost model, layout and growth search, run simulation, reports.

Pure Python: it never imports torch or `runtime/`, so planning starts fast and runs anywhere.
"""
