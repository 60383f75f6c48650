"""Generators of valid parallel layouts, apart from the cost model (as Calculon keeps them).

A partial layout fixes some fields; every other field is enumerated over the values that
can work for the model and cluster. Choices that another dominates (as fast or faster, no
more memory) are left out of an open search: zero 0 (zero 1 moves less data — reduce-scatter
+ all-gather of bf16 weights instead of an fp32 all-reduce — and needs less memory)
and tp > 1 without sequence parallelism (the same communication volume, less memory and less
element-wise work with it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import field, fields, make_dataclass
from typing import get_type_hints

from planner.errors import InvalidLayout
from planner.model.specs import ClusterSpec, Layout, ModelSpec, validate_layout

# Layout's fields a partial layout may leave open (None) for the search: all but the batch, which
# is always given, and the attention kernel, a fact about the software rather than a choice.
OPEN_FIELDS = tuple(f.name for f in fields(Layout) if f.name not in ("global_batch", "attention"))


def _partial_fields() -> list[tuple]:
    hints = get_type_hints(Layout)
    return [("global_batch", int),
            *[(name, hints[name] | None, field(default=None)) for name in OPEN_FIELDS],
            ("attention", hints["attention"], field(default="flash")),
            # A narrower space for the growth planner's first pass: micro-batches 1/2/4/8, at most
            # two model chunks per stage, zero 1 or 3. The chosen schedule is refined with the full space.
            ("coarse", bool, field(default=False))]


def _fixed(part) -> Layout | None:
    """The layout itself when no field is left open."""
    given = {name: getattr(part, name) for name in OPEN_FIELDS}
    if None in given.values():
        return None
    return Layout(global_batch=part.global_batch, attention=part.attention, **given)


PartialLayout = make_dataclass(
    "PartialLayout", _partial_fields(), frozen=True,
    namespace={"__doc__": "Layout with the fields left None for the search to choose (derived from Layout).",
               "fixed": _fixed, "__module__": __name__})


# Model chunks per pipeline stage the search tries (Megatron-LM runs use 1–4, rarely 8), and
# the largest micro-batch it tries when none is given (beyond 16 sequences of 2048 the GEMMs
# are saturated and only memory grows).
MAX_INTERLEAVE = 8
MAX_OPEN_MICRO_BATCH = 16


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def tensor_parallel_degrees(model: ModelSpec, cluster: ClusterSpec) -> list[int]:
    """tp must divide heads, kv heads, the FFN and the GPU count, and stay inside a node."""
    return [
        t for t in divisors(cluster.gpus)
        if t <= cluster.gpus_per_node and model.heads % t == 0 and model.n_kv_heads % t == 0
        and model.ffn % t == 0
    ]


def candidate_layouts(model: ModelSpec, cluster: ClusterSpec, part: PartialLayout) -> Iterator[Layout]:
    """Every layout consistent with `part` that passes validate_layout's structural rules."""
    n = cluster.gpus
    tps = [part.tp] if part.tp else tensor_parallel_degrees(model, cluster)
    for tp in tps:
        if n % tp:
            continue
        pps = [part.pp] if part.pp else [p for p in divisors(n // tp) if p <= model.layers]
        for pp in pps:
            if n % (tp * pp):
                continue
            dp = n // (tp * pp)
            if part.dp and part.dp != dp:
                continue
            per_replica = part.global_batch // dp if part.global_batch % dp == 0 else 0
            if not per_replica:
                continue
            mbs = [part.micro_batch] if part.micro_batch else [
                b for b in divisors(per_replica)
                if b <= MAX_OPEN_MICRO_BATCH and (not part.coarse or b in (1, 2, 4, 8))]
            for mb in mbs:
                if per_replica % mb:
                    continue
                m = per_replica // mb
                ends_options = [part.ends_in_split] if part.ends_in_split is not None else (
                    [False, True] if pp > 1 and not part.coarse else [False])
                for ends in ends_options:
                    # Splits Megatron-LM accepts when the search picks pp: the layers (and the ends, when
                    # counted) evenly over the stages; a pp the case gives may split unevenly (the runtime
                    # runs it: the first stages take the remainder).
                    slots = model.layers + (2 if ends else 0)
                    if (ends and pp == 1) or (pp > 1 and slots % pp and (ends or part.pp is None)):
                        continue
                    yield from _chunkings(model, part, tp, pp, dp, mb, m, ends)


def _chunkings(model: ModelSpec, part: PartialLayout, tp: int, pp: int, dp: int, mb: int, m: int,
               ends: bool) -> Iterator[Layout]:
    """The interleavings, sequence parallelism, ZeRO stages and recomputes of one tp·pp·dp, micro-batch
    and pipeline split."""
    if part.interleave:
        vs = [part.interleave]
    elif pp > 1 and m % pp == 0:
        # Any chunking Megatron-LM accepts: v divides each stage's layers (the ends counted as layers with
        # `ends`); where the layers do not split evenly, chunks split the largest stage.
        per_stage = -(-(model.layers + (2 if ends else 0)) // pp)
        vs = [v for v in divisors(per_stage) if v <= (2 if part.coarse else MAX_INTERLEAVE)]
    else:
        vs = [1]
    sps = [part.sequence_parallel] if part.sequence_parallel is not None else [tp > 1]
    zeros = [part.zero] if part.zero is not None else (
        [z for z in (1, 2, 3) if not part.coarse or z != 2] if pp == 1 else [1] if part.coarse else [1, 2])
    recomputes = [part.recompute] if part.recompute else ["none", "selective", "full"]
    for v in vs:
        if v > 1 and (pp == 1 or m % pp):
            continue
        for sp in sps:
            if sp and tp == 1:
                continue
            for zero in zeros:
                if zero == 3 and pp > 1:
                    continue
                for rc in recomputes:
                    yield Layout(tp=tp, pp=pp, dp=dp, micro_batch=mb, global_batch=part.global_batch,
                                 recompute=rc, sequence_parallel=bool(sp), interleave=v, zero=zero,
                                 attention=part.attention, ends_in_split=ends)


def check_fixed_fields(model: ModelSpec, cluster: ClusterSpec, part: PartialLayout) -> None:
    """Refuse, naming the field, a partial layout whose given fields cannot work whatever the
    search chooses for the others."""
    tp, pp = part.tp or 1, part.pp or 1
    if cluster.gpus % (tp * pp):
        raise InvalidLayout(f"parallel: tp·pp = {tp}·{pp} = {tp * pp} does not divide the {cluster.gpus} GPUs.")
    dp = part.dp or cluster.gpus // (tp * pp)
    mb, v = part.micro_batch or 1, part.interleave or 1
    batch_fixed = part.micro_batch is not None and (part.dp is not None or None not in (part.tp, part.pp))
    probe = Layout(
        tp=tp, pp=pp, dp=dp, micro_batch=mb,
        # Where the search still picks dp or micro_batch, only the other fields are checked here.
        global_batch=part.global_batch if batch_fixed else mb * dp * pp,
        recompute=part.recompute or "none", sequence_parallel=bool(part.sequence_parallel and tp > 1),
        interleave=v, zero=part.zero if part.zero is not None else (1 if pp > 1 else 0),
        ends_in_split=bool(part.ends_in_split and pp > 1),
        attention=part.attention,
    )
    validate_layout(model, cluster, probe)
