"""What leaves the runtime for other tools: a trained checkpoint as a Hugging Face model (hf.py).

May import: the planner and every room of the runtime.
"""
