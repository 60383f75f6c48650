"""The cost model: a device profile (device_profile.py) turned into kernel times (device.py), a
layer's compute (compute.py) and communication (comm.py), and one optimizer step's time with its
breakdown (step.py). "Change how the all-reduce is costed" is comm.py.

May import: planner.errors, planner.jsonio, planner.model.
"""
