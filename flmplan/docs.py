"""The command pages' option lists (docs/commands/*.md), written from the command line itself so that
they cannot name an option that does not exist or a default that changed.

Each page is prose written by hand, and between `<!-- options -->` and `<!-- /options -->` the
command's usage and its options, each with its default, generated here:

    python -m flmplan.docs            # rewrite the option lists
    python -m flmplan.docs --check    # exit 1 when a page's list differs from the command line's
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import typer

from flmplan.cli import app

# typer ≥ 0.26 carries its own copy of click: its commands and parameters are read by what they do
# (a group lists commands; a parameter names its kind), not by click's classes.

DOCS = Path(__file__).resolve().parents[1] / "docs" / "commands"
BEGIN, END = "<!-- options -->", "<!-- /options -->"


def commands() -> dict:
    """Every command by its words after `flmplan` ('simulate', 'data prepare', …)."""
    root = typer.main.get_command(app)
    ctx = root.context_class(root)
    out: dict = {}
    for name in root.list_commands(ctx):
        cmd = root.get_command(ctx, name)
        if hasattr(cmd, "list_commands"):
            for sub in cmd.list_commands(ctx):
                out[f"{name} {sub}"] = cmd.get_command(ctx, sub)
        else:
            out[name] = cmd
    return out


def page_name(command: str) -> str:
    return command.split()[0] + ".md"


def _default(p) -> str:
    if p.required:
        return "required"
    d = p.default
    if d is None or d == () or d == []:
        return "none"
    if p.param_type_name == "option" and p.is_flag:
        if p.secondary_opts:
            return f"`{p.opts[0] if d else p.secondary_opts[0]}`"
        return "on" if d else "off"
    if hasattr(d, "value"):
        d = d.value
    if isinstance(d, float) and d.is_integer():
        d = int(d)
    return f"`{d}`"


def options_text(command: str, cmd) -> str:
    """The usage line and one list item per argument and option: its name, default and help."""
    ctx = cmd.context_class(cmd, info_name=f"flmplan {command}")
    usage = " ".join(cmd.collect_usage_pieces(ctx))
    lines = [f"`flmplan {command} {usage}`", ""]
    for p in cmd.params:
        if p.param_type_name == "argument":
            lines.append(f"- `{p.human_readable_name}` ({_default(p)}): {getattr(p, 'help', '') or 'argument'}")
            continue
        if p.param_type_name != "option" or p.hidden:
            continue
        names = " / ".join(f"`{o}`" for o in p.opts + p.secondary_opts)
        meta = "" if p.is_flag else f" {p.make_metavar(ctx)}"
        help_text = re.sub(r"\s+", " ", p.help or "").strip()
        lines.append(f"- {names}{meta} (default {_default(p)}): {help_text}".rstrip(": "))
    return "\n".join(lines)


def render(text: str, blocks: dict[str, str]) -> str:
    """`text` with each options block replaced by the command line's (blocks: command → list)."""
    def one(match: re.Match) -> str:
        command = match.group(1)
        if command not in blocks:
            raise KeyError(f"no command 'flmplan {command}'")
        return f"{BEGIN} {command}\n{blocks[command]}\n{END}"

    return re.sub(rf"{re.escape(BEGIN)} ([a-z -]+?)\n.*?{re.escape(END)}", one, text, flags=re.S)


def main() -> int:
    blocks = {name: options_text(name, cmd) for name, cmd in commands().items()}
    stale = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        new = render(text, blocks)
        if new != text:
            stale.append(page.name)
            if "--check" not in sys.argv:
                page.write_text(new)
    if "--check" in sys.argv and stale:
        print(f"stale option lists in docs/commands: {', '.join(stale)}; run python -m flmplan.docs")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
