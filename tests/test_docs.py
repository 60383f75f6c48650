"""The documentation a newcomer reads names only what exists: the README and docs/ pages name commands and
options the command line has, every relative link resolves, and the command pages' option lists are
the command line's own (`python -m flmplan.docs`). The README stays short: what it is, install, plan,
test, run, export, and links."""

import re
from pathlib import Path

from flmplan import docs

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
ALWAYS = {"--help", "--version"}


def spans(text: str) -> list[str]:
    """Code as a reader copies it: each line of a fenced block, and each inline `…` span."""
    out = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        out += block.splitlines()
    out += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return out


def test_every_command_and_option_named_exists():
    commands = docs.commands()
    options = {name: {o for p in cmd.params for o in (*p.opts, *getattr(p, "secondary_opts", ()))}
               for name, cmd in commands.items()}
    checked = 0
    for page in PAGES:
        for span in spans(page.read_text()):
            for m in re.finditer(r"(?:^|\s)flmplan ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?(.*)", span):
                name = f"{m.group(1)} {m.group(2)}" if f"{m.group(1)} {m.group(2)}" in commands else m.group(1)
                assert name in commands, f"{page.name}: no command 'flmplan {name}' ({span!r})"
                rest = m.group(3) if name == m.group(1) and m.group(2) is None else m.group(0).split(name, 1)[1]
                for opt in re.findall(r"(?<![\w-])--[a-z][a-z-]*", rest):
                    assert opt in options[name] | ALWAYS, f"{page.name}: 'flmplan {name}' has no {opt} ({span!r})"
                    checked += 1
    assert checked > 40


def test_every_relative_link_resolves():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links {target}, which does not exist"


def test_the_command_pages_list_the_command_lines_own_options():
    blocks = {name: docs.options_text(name, cmd) for name, cmd in docs.commands().items()}
    pages = sorted(docs.DOCS.glob("*.md"))
    documented = set()
    for page in pages:
        text = page.read_text()
        assert docs.render(text, blocks) == text, f"{page.name} is stale: run python -m flmplan.docs"
        documented |= set(re.findall(rf"{re.escape(docs.BEGIN)} ([a-z -]+?)\n", text))
    assert documented == set(blocks), set(blocks) ^ documented


def test_the_readme_is_short_and_its_first_two_commands_plan_and_test():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 100
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    assert "flmplan simulate --budget 100000" in blocks[0] and "pytest" in blocks[1]
