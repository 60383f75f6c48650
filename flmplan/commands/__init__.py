"""One module per `flmplan` command, named after it (grow-vs-scratch in grow_vs_scratch.py); each is a
plain function that flmplan/cli.py registers. Heavy imports stay inside the functions.

May import: flmplan.common, flmplan.settings, and the three layers (planner, profiles, runtime).
"""
