"""What leaves the planner for other tools: Megatron-LM arguments (megatron.py), a torchtitan config
registry (torchtitan.py), a SLURM batch script (slurm.py), with what every target is told of a stage (stage_facts.py)
and the folder they are written to (export_plan.py). "Add an export target" is a module here.

What a tool cannot express is refused with the field named or, with `nearest`, replaced by the
nearest thing it has and said so in the file. May import: every room below it, up to planner.plan.
"""
