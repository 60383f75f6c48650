"""Discrete-event simulation (simpy) of one pipeline step (pipeline.py) and of a whole run with
failures, checkpoints, restarts and spot preemptions (whole_run.py).

May import: planner.errors, planner.jsonio, planner.model, planner.cost, planner.layout.
"""
