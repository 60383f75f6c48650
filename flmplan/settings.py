"""`flmplan simulate`'s settings, typed and declared once (torchtitan's job config is the model): each
field's docstring is its `--help` text, its default the option's, and `option(...)` adds what click
checks at parse time. The command's options, the TOML file `--config` reads and the plan's record
of its settings (`assumptions.settings`) are all this one class."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Annotated, get_type_hints

import typer

from flmplan.common import (
    Attention,
    GrowthTiming,
    IntervalRule,
    Position,
    Schedule,
    one_line_paragraphs,
    parse_money,
    settings_file,
)


def option(*decls: str, default=None, **checks) -> dataclasses.Field:
    """A field with its default and what typer.Option checks (`min`, `max`, `case_sensitive`, …)."""
    return field(default=default, metadata={"decls": decls, "checks": checks})


@dataclass
class SimulateSettings:
    """Every setting of `flmplan simulate`, in the order `--help` lists them."""

    config: Path | None = option("--config", is_eager=True, callback=settings_file)
    """A TOML file of simulate's settings (option names with underscores, e.g. max_gpus = 96); flags given on the
    command line override it. The plan records every setting it was made with."""
    budget: float = option(default=100_000, parser=parse_money, metavar="USD")
    """Budget in US dollars: 100000, 100k or 1.5M."""
    gpu: str = option(default="a800-80gb")
    """GPU type: a catalog key in any case (a800-80gb, H100-80GB), or a family where the catalog has one of
    it (h100, h200, b200); an unknown name lists the catalog."""
    price: float | None = option(min=0.001)
    """USD per GPU-hour (default: the catalog's dated price; for a800-80gb $1.00, the price FLM-101B's figures
    imply)."""
    max_gpus: int = option(default=192, min=1)
    """Largest cluster to rent, in GPUs (whole nodes)."""
    target_size: str = option(default="101B")
    """Smallest final model, e.g. 101B."""
    schedule: Schedule = option(default=Schedule.auto, case_sensitive=False)
    """auto searches; flm is FLM-101B's own 16B→51B→101B."""
    max_days: float = option(default=60.0, min=0.01)
    """Deadline for the whole run, in days."""
    global_batch: int = option(default=2304, min=1)
    """Sequences per optimizer step."""
    grow_steps: int = option(default=5000, min=0)
    """MSG mask-ramp steps after each growth."""
    loss_law: str = option(default="chinchilla")
    """chinchilla, besiroglu, or a JSON file of constants."""
    carryover: float = option(default=1.0, min=0.01, max=1.0)
    """Equal-loss carry-over efficiency across a growth."""
    ramp_efficiency: float = option(default=0.5, min=0.0, max=1.0)
    """Share of mask-ramp tokens that count."""
    token_efficiency: str = option(default="1")
    """Tokens of a model trained from scratch that each token after a growth is worth: a number (1: equal-loss
    continuation alone, assumed), published (fitted on Du et al. 2024's G_stack 7B: benchmarks/growth_cases.py), or
    the pairs.json of `flmplan grow-vs-scratch` (measured)."""
    attention: Attention = option(default=Attention.flash, case_sensitive=False)
    """The attention kernel (FLM-101B's run used flash)."""
    position: Position = option(default=Position.xpos, case_sensitive=False)
    """The position encoding: xpos (FLM-101B's; Megatron-LM and torchtitan do not have it) or rotary (every
    export target has it)."""
    profile: Path | None = option()
    """Profile JSON (default: built-in one of the GPU)."""
    out: Path | None = option()
    """The plan file to write (JSON, e.g. plan.json)."""
    as_json: bool = option("--json", default=False)
    """Print the plan as JSON."""
    report: Path | None = option()
    """The HTML report file to write (plotly charts, tables)."""
    confidence: float = option(default=0.9, min=0.5, max=0.99)
    """The budget must hold at this quantile of the simulated cost, failures counted."""
    max_growth_factor: float = option(default=4.0, min=1.0)
    """Largest parameter ratio of one growth (default 4: published growth operators measured ×2–4)."""
    growth_timing: GrowthTiming = option(default=GrowthTiming.search, case_sensitive=False)
    """When the plan grows first: search (where the loss model predicts the lowest final loss) or gstack (Du et al.
    2024's fitted guideline for the compute spent; the advice compares the two)."""
    failure_rate: float = option(default=5.0, min=0.0)
    """Node failures per 1000 node-days."""
    restart_min: float = option(default=10.0, min=0.0)
    """Detection + restart time after a failure, minutes."""
    checkpoint_min: float = option(default=5.0, min=0.0)
    """Time to write a checkpoint, minutes."""
    checkpoint_interval_min: float | None = option(min=0.01)
    """Minutes between checkpoints (default: the --checkpoint-rule's optimum)."""
    checkpoint_rule: IntervalRule = option(default=IntervalRule.daly, case_sensitive=False)
    """Optimal checkpoint interval, when none is given."""
    spare_fraction: float = option(default=0.05, min=0.0, max=1.0)
    """Spare nodes as a fraction of the nodes."""
    spot_per_day: float = option(default=0.0, min=0.0)
    """Spot preemptions per day (0: on-demand)."""
    spot_notice_min: float = option(default=2.0, min=0.0)
    """Preemption notice, minutes."""
    trials: int = option(default=1000, min=1)
    """Monte Carlo trials of the run."""
    seed: int = option(default=0)
    """Seed of the run simulation."""
    teacher_every: int = option(default=0, min=0)
    """FreeLM's objective: every K-th step a teacher batch of propositions (0: off; K ≥ 2); the plan pays for those
    steps on top of the language tokens."""
    teacher_data: Path | None = option()
    """The teacher signal's propositions (JSON lines: text, proposition, label; or iq: the IQ generators' train
    split), written into the plan."""
    data: list[str] | None = option()
    """The corpus the plan trains on (repeat for a mixture, WEIGHT:PREFIX; a folder or glob of prepared
    corpora, or a mixture file of prefix: weight): prepared corpora (`flmplan data prepare`), checked and
    recorded in the plan with their tokenizer; the plan says how many times it reads them."""


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal after it in the class body), on one line."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, after in itertools.pairwise(body):
        if (isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[node.target.id] = one_line_paragraphs(after.value.value)
    return docs


def command(cls: type, body: Callable) -> Callable:
    """A typer command whose options are `cls`'s fields; it calls `body(ctx, cls(**options))`."""
    hints, docs = get_type_hints(cls), field_docs(cls)
    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    for f in fields(cls):
        meta = typer.Option(*f.metadata["decls"], help=docs[f.name], **f.metadata["checks"])
        params.append(inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=f.default,
                                        annotation=Annotated[hints[f.name], meta]))

    def run(ctx: typer.Context, **options) -> None:
        body(ctx, cls(**options))

    run.__signature__ = inspect.Signature(params)
    run.__annotations__ = {p.name: p.annotation for p in params}
    run.__doc__, run.__name__ = body.__doc__, body.__name__
    return run
