"""The layout search: the layouts a case admits (candidates.py), a case file and the published runs
the cost model is checked on (case.py), and the fastest layout that fits in memory (search.py).

May import: planner.errors, planner.jsonio, planner.model, planner.cost.
"""
