"""The growth plan: growth operators and the shapes they reach (operators.py), FLM-101B's own recipe
(flm.py), loss laws (loss_law.py) and their fit to runs (loss_fit.py), the published evidence of what
a growth saves (evidence.py), and the schedule search (schedule.py, schedule_search.py), with the
growth cap and the loss check it keeps to.

May import: the rooms below it (errors, jsonio, model, cost, layout, sim). The advice, which reads the
search, lives above it in planner.plan.
"""
