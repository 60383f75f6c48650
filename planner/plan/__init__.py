"""The plan: the file `simulate` writes and `run` executes (plan_file.py), the budget planner that
makes it from a schedule, its simulation and the baselines (budget.py), what it means for the user
(advice.py), and a run held against it (validation.py, run_curves.py).

May import: every room below it (errors, jsonio, model, cost, layout, sim, growth).
"""
