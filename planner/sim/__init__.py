"""Discrete-event simulation (simpy) of a step and of a whole run."""
