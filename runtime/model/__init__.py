"""The model the runtime trains: the decoder (decoder.py), µP's rules (mup.py), and the tiny CPU-sized
versions of a plan's stages (scale.py).

May import: the planner, runtime.hooks.
"""
