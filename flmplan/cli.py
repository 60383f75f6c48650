"""The `flmplan` command line: a thin layer above measure (`profiles/`), decide (`planner/`) and
execute (`runtime/`), one module per concern, each registering its commands on the one app
(flmplan/common.py) when imported, in the order `flmplan --help` lists them.

Imports inside the commands are lazy so that `flmplan profile` runs on GPU images that have only
torch, numpy, typer and rich, and `flmplan simulate` starts without torch. Every user-facing problem
is a FlmplanError (ProfileError is one) or a refusal of click's parser: both are printed as one
sentence on stderr, exit code 2 (flmplan/common.py).
"""

import importlib
import sys

from flmplan.common import VALIDATE_TOLERANCE, app

COMMANDS = ("profile", "plan", "run", "data", "evidence", "export")
for _module in COMMANDS:
    importlib.import_module(f"flmplan.{_module}")

__all__ = ["VALIDATE_TOLERANCE", "app"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
