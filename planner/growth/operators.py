"""Stage shapes that Masked Structural Growth can reach, and the growth between two of them.

MSG (Yao et al., ICLR 2024) grows hidden size (keeping the head dimension, so heads grow with
it), FFN size, heads and depth, each function-preserving. flmplan's stages keep FFN = 4·hidden
and a fixed head dimension (FLM-101B: 128), so a stage shape is (layers, hidden) and a growth
may widen, deepen or both, by at most ×2 in each dimension per growth (FLM-101B grew
16B → 51B by width ×1.82 and 51B → 101B by depth ×2). Hidden sizes are multiples of
4 heads (FLM-101B's 16B stage: 44 heads), so every stage keeps tensor parallelism up to 4.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

from planner.errors import FlmplanError
from planner.model.specs import ModelSpec

MAX_GROWTH_FACTOR = 2.0
# Width over depth of any stage (FLM-101B: 141 at 16B, 256 at 51B, 128 at 101B).
ASPECT_RANGE = (32, 256)


@dataclass(frozen=True)
class Growth:
    """The MSG operators that take one stage's shape to the next."""

    from_stage: int
    hidden: tuple[int, int] | None
    ffn: tuple[int, int] | None
    heads: tuple[int, int] | None
    layers: tuple[int, int] | None

    def to_dict(self, grow_steps: int) -> dict:
        dims = {k: list(v) for k, v in (("hidden", self.hidden), ("ffn", self.ffn), ("heads", self.heads),
                                         ("layers", self.layers)) if v}
        return {"operator": "msg", "from_stage": self.from_stage, "dims": dims, "grow_steps": grow_steps,
                "lr_rewarm_steps": 100}


def growth_between(a: ModelSpec, b: ModelSpec, from_stage: int) -> Growth:
    """The growth from a to b, or an error saying why MSG cannot do it."""
    if not reachable(a, b):
        raise FlmplanError(
            f"MSG cannot grow {a.layers}×{a.hidden} (head dim {a.head_dim}) into {b.layers}×{b.hidden} "
            f"(head dim {b.head_dim}): each dimension may grow at most ×{MAX_GROWTH_FACTOR:g}, never shrink, "
            "and the head dimension stays fixed."
        )

    def pair(x: int, y: int) -> tuple[int, int] | None:
        return (x, y) if x != y else None

    return Growth(from_stage=from_stage, hidden=pair(a.hidden, b.hidden), ffn=pair(a.ffn, b.ffn),
                  heads=pair(a.heads, b.heads), layers=pair(a.layers, b.layers))


def msg_problem(a, b) -> str | None:
    """Why MSG cannot turn shape `a` into shape `b`, or None when it can: it never shrinks, and
    keeps the head dimension, the vocabulary, the sequence length and the grouping of query heads
    over key/value heads. Takes any shape with those fields (ModelSpec, the runtime's config)."""
    if a.head_dim != b.head_dim:
        return f"the head dimension changes ({a.head_dim} → {b.head_dim})"
    for name in ("layers", "hidden", "heads", "ffn"):
        if getattr(b, name) < getattr(a, name):
            return f"{name} shrinks ({getattr(a, name)} → {getattr(b, name)})"
    if a.vocab != b.vocab:
        return f"the vocabulary changes ({a.vocab} → {b.vocab})"
    if a.seq != b.seq:
        return f"the sequence length changes ({a.seq} → {b.seq})"
    if b.heads * a.n_kv_heads != a.heads * b.n_kv_heads:
        return "the ratio of query heads to key/value heads changes"
    return None


def reachable(a: ModelSpec, b: ModelSpec) -> bool:
    """True when the planner grows a into b with MSG: a growth MSG can do (`msg_problem`), the same
    activation, something grows, and no dimension more than MAX_GROWTH_FACTOR at once."""
    if msg_problem(a, b) is not None or a.activation != b.activation:
        return False
    dims = ((a.layers, b.layers), (a.hidden, b.hidden), (a.ffn, b.ffn), (a.heads, b.heads))
    if any(y > MAX_GROWTH_FACTOR * x for x, y in dims):
        return False
    return any(y > x for x, y in dims)


def shape(base: ModelSpec, layers: int, hidden: int) -> ModelSpec:
    """A stage of the family of `base`: FFN ratio, head dimension, GQA ratio and every other
    field kept."""
    ratio = base.ffn / base.hidden
    heads = hidden // base.head_dim
    kv = None if base.kv_heads is None else max(1, heads * base.kv_heads // base.heads)
    return replace(base, layers=layers, hidden=hidden, heads=heads, kv_heads=kv, ffn=round(ratio * hidden))


def hidden_step(base: ModelSpec) -> int:
    return base.head_dim * 4


def smallest_shape(base: ModelSpec, target_params: float, aspect: float = 128.0) -> ModelSpec:
    """The smallest shape of the family with at least target_params and about this
    hidden/layers ratio (FLM-101B's final shape: 128)."""
    step = hidden_step(base)
    best = None
    for layers in range(4, 257, 2):
        hidden = max(step, round(aspect * layers / step) * step)
        m = shape(base, layers, hidden)
        if m.params() >= target_params:
            best = m
            break
    if best is None:
        raise FlmplanError(f"No model shape of this family reaches {target_params / 1e9:.1f}B parameters.")
    return best


def final_shapes(base: ModelSpec, target_params: float, count: int = 3) -> list[ModelSpec]:
    """Final shapes of at least target_params: the base shape if it qualifies, and the smallest
    shapes of the family at a few depths with a sane aspect ratio (hidden/layers 64–200)."""
    found: dict[tuple[int, int], ModelSpec] = {}
    if base.params() >= target_params:
        found[(base.layers, base.hidden)] = base
    step = hidden_step(base)
    for layers in range(16, 161, 8):
        lo = max(step, math.ceil(64 * layers / step) * step)
        for hidden in range(lo, 200 * layers + 1, step):
            m = shape(base, layers, hidden)
            if m.params() >= target_params:
                found.setdefault((layers, hidden), m)
                break
    ranked = sorted(found.values(), key=lambda m: m.params())
    if not ranked:
        raise FlmplanError(f"No model shape of this family reaches {target_params / 1e9:.1f}B parameters.")
    keep = [m for m in ranked if (m.layers, m.hidden) == (base.layers, base.hidden)]
    for m in ranked:
        if len(keep) >= count:
            break
        if m not in keep:
            keep.append(m)
    return keep


def predecessors(target: ModelSpec) -> list[ModelSpec]:
    """Shapes one MSG growth below `target` (width, depth or both), on the hidden-size grid."""
    step = hidden_step(target)
    layer_options = {target.layers, math.ceil(target.layers / 2)}
    hidden_options = {target.hidden}
    for f in (0.55, 0.75):
        h = max(step, round(target.hidden * f / step) * step)
        hidden_options.add(h)
    out = []
    for layers in sorted(layer_options):
        for hidden in sorted(hidden_options):
            m = shape(target, layers, hidden)
            sane = ASPECT_RANGE[0] <= hidden / layers <= ASPECT_RANGE[1]
            if (layers, hidden) != (target.layers, target.hidden) and sane and reachable(m, target):
                out.append(m)
    return out


def growth_chains(final: ModelSpec, max_stages: int = 4, min_params: float = 1e9) -> Iterator[list[ModelSpec]]:
    """Every chain of stage shapes (1 to max_stages) that ends at `final`, smallest first."""
    yield [final]
    if max_stages == 1:
        return
    for prev in predecessors(final):
        if prev.params() < min_params:
            continue
        for chain in growth_chains(prev, max_stages - 1, min_params):
            yield [*chain, final]
