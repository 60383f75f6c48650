"""The `flmplan` command line: a thin layer above measure (`profiles/`), decide (`planner/`) and
execute (`runtime/`). Each command is a function in the module of its name (flmplan/commands/),
registered here, in the order `flmplan --help` lists them; this module also holds the one error style.

Imports inside the commands are lazy so that `flmplan profile` runs on GPU images that have only
torch, numpy, typer and rich, and `flmplan simulate` starts without torch. Every user-facing problem
is a FlmplanError (ProfileError is one) or a refusal of click's parser: both are printed as one
sentence on stderr, exit code 2, caught once here.
"""

from __future__ import annotations

import sys

import typer
import typer.core

from flmplan.commands.data import data_app
from flmplan.commands.estimate import estimate
from flmplan.commands.eval import eval_iq
from flmplan.commands.export import export
from flmplan.commands.fit_loss import fit_loss
from flmplan.commands.grow import grow
from flmplan.commands.grow_vs_scratch import grow_vs_scratch
from flmplan.commands.profile import profile
from flmplan.commands.run import run
from flmplan.commands.simulate import simulate
from flmplan.commands.tune import tune
from flmplan.commands.validate import validate
from flmplan.common import VALIDATE_TOLERANCE, one_line_paragraphs, stderr

# typer ≥ 0.26 carries its own copy of click; its exception classes are reached through typer's.
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class _OneErrorStyle(typer.core.TyperGroup):
    """Every refusal the same way, caught once: a bad option (click's parser) or a bad input found
    later (a FlmplanError) is one line on stderr, `Error: <sentence>`, exit code 2, no traceback."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        from planner.errors import FlmplanError

        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _ClickException as err:
            if type(err).__name__ == "NoArgsIsHelpError":     # typer has printed the help
                code = err.exit_code
            else:
                ctx = getattr(err, "ctx", None)
                hint = f" See '{ctx.command_path} --help'." if ctx is not None else ""
                message = err.format_message().rstrip()
                _print_error(message + ("" if message.endswith((".", "?", "!")) else ".") + hint)
                code = err.exit_code
        except FlmplanError as err:
            _print_error(str(err))
            code = 2
        except typer.Abort:
            stderr.print("Aborted.")
            code = 1
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def _print_error(sentence: str) -> None:
    from rich.markup import escape

    stderr.print(f"[bold red]Error:[/] {escape(sentence)}", highlight=False, soft_wrap=True)


app = typer.Typer(
    cls=_OneErrorStyle,
    add_completion=False,
    no_args_is_help=True,
    help="flmplan: plan, simulate and run LLM pretraining by growth (the FLM-101B recipe) on a budget.",
)


def _version(shown: bool) -> None:
    if shown:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"flmplan {version('flmplan')}")
        except PackageNotFoundError:           # a checkout run without installing (the GPU image)
            print("flmplan (not installed)")
        raise typer.Exit()


@app.callback()
def _root(shown: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                     help="Print flmplan's version and exit.")) -> None:
    """flmplan: plan, simulate and run LLM pretraining by growth on a budget."""


COMMANDS = (("profile", profile), ("estimate", estimate), ("simulate", simulate), ("validate", validate),
            ("run", run), ("tune", tune), ("grow-vs-scratch", grow_vs_scratch), ("fit-loss", fit_loss),
            ("eval", eval_iq), ("export", export), ("grow", grow))
for _name, _command in COMMANDS:
    app.command(_name, help=one_line_paragraphs(_command.__doc__ or ""))(_command)
for _info in data_app.registered_commands:
    _info.help = one_line_paragraphs(_info.callback.__doc__ or "")
app.add_typer(data_app, name="data")

__all__ = ["VALIDATE_TOLERANCE", "app"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
