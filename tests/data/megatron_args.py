"""Write megatron_args.json: every option of Megatron-LM's own argument parser at one commit (its
flags, arity and choices), so the tests can parse flmplan's exported arguments with it where
Megatron-LM itself cannot be installed (it needs triton and Python ≥ 3.12's typing).

    git -C Megatron-LM checkout d98e8a64ddf34856e74b24714e3bedb2f5a39553
    PYTHONPATH=Megatron-LM python tests/data/megatron_args.py tests/data/megatron_args.json

(run in an environment with torch and triton; on Python 3.11 `typing.override` is shimmed.)
"""

import argparse
import json
import subprocess
import sys
import typing

if not hasattr(typing, "override"):
    typing.override = lambda f: f        # only so the module imports on Python 3.11

from megatron.training.arguments import add_megatron_arguments


def main(path: str) -> None:
    import megatron

    root = megatron.__path__[0]
    commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    parser = add_megatron_arguments(argparse.ArgumentParser(allow_abbrev=False))
    options = []
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        choices = None
        if action.choices:
            choices = [getattr(c, "name", str(c)) for c in action.choices]
        options.append({"flags": action.option_strings, "takes_value": action.nargs != 0,
                        "nargs": action.nargs, "choices": choices})
    with open(path, "w") as f:
        json.dump({"source": "NVIDIA/Megatron-LM megatron/training/arguments.py add_megatron_arguments",
                   "commit": commit, "options": options}, f, indent=0)


if __name__ == "__main__":
    main(sys.argv[1])
