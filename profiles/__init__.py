"""flmplan's profiler: measure the decoder core on the device at hand, and the shipped profiles.

Nothing here imports beyond torch, numpy, typer and rich (the GPU image has no more).
"""
