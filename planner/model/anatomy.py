"""The decoder layer, described once (Calculon's layer object, `calculon/llm/layers.py`).

Its weight matrices, attention core, element-wise ops and the tensors it keeps for backward are
listed here and nowhere else: FLOPs (planner/model/flops.py), kernel times (planner/cost/compute.py),
parameter counts (planner/model/specs.py), activation memory (planner/model/memory.py) and the shapes the
profiler measures (profiles/kernels.py) are all derived from these lists.

The layer is Megatron-LM's block, the one flmplan's runtime trains: LayerNorm → QKV → attention
→ output projection → residual; LayerNorm → MLP → residual. Tensor parallelism t splits the
weight matrices column- or row-wise (Shoeybi et al. 2019); the element-wise work outside them
splits only under sequence parallelism (Korthikanti et al. 2022, §4.2.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, Protocol


class ModelSpec(Protocol):
    """What the anatomy reads of a model: planner.model.specs.ModelSpec, which derives its parameter
    counts from this module (so this module names it by what it reads, not by import)."""

    hidden: int
    heads: int
    ffn: int
    seq: int
    activation: str
    position: str

    @property
    def q_dim(self) -> int: ...

    @property
    def kv_dim(self) -> int: ...

    @property
    def ffn_matrices(self) -> int: ...

# The lists below are cached per model (models are frozen and hashable): the layout search asks
# for them thousands of times.
Split = Literal["column", "row"]
# Where element-wise work and stored tensors live under tensor parallelism: "sequence" — the
# whole hidden width on every rank unless sequence parallelism splits the sequence; "tensor" —
# the local heads and neurons, always split t ways.
Placement = Literal["sequence", "tensor"]


@dataclass(frozen=True)
class Matmul:
    """A weight matrix with its bias, y = x·Wᵀ + b, and its Megatron split."""

    name: str
    d_in: int
    d_out: int
    split: Split

    def local(self, tp: int) -> tuple[int, int]:
        """(d_in, d_out) on one tensor-parallel rank."""
        return (self.d_in, self.d_out // tp) if self.split == "column" else (self.d_in // tp, self.d_out)

    @property
    def flops_per_token(self) -> int:
        """Forward: 2 FLOPs per multiply-add."""
        return 2 * self.d_in * self.d_out

    @property
    def params(self) -> int:
        return self.d_in * self.d_out + self.d_out

    @property
    def tp_replicated_params(self) -> int:
        """A row-parallel bias is added after the all-reduce, so every rank keeps it whole."""
        return self.d_out if self.split == "row" else 0


@dataclass(frozen=True)
class Elementwise:
    """A memory-bound op of the layer's forward: `count` instances per layer, each moving
    `passes` elements (reads + writes) per element of its `width`, per token. `kernel` is the
    profiled kernel whose achieved bandwidth it runs at; `launches` the kernels eager PyTorch
    starts for all instances; `selective` whether selective recompute re-runs it."""

    name: str
    kernel: str
    width: int
    passes: float
    count: int
    placement: Placement
    launches: int
    selective: bool = False

    def elements_per_token(self, tp: int, sequence_parallel: bool) -> float:
        n = self.count * self.passes * self.width
        return n / tp if (self.placement == "tensor" or sequence_parallel) else n


@dataclass(frozen=True)
class Stored:
    """A tensor one layer keeps for backward: bytes per token, and where it lives under tp."""

    name: str
    bytes_per_token: float
    placement: Placement


@lru_cache(maxsize=4096)
def matmuls(model: ModelSpec) -> tuple[Matmul, ...]:
    """QKV and MLP-up (with SwiGLU's gate fused into it, as Megatron-LM does) are column-parallel;
    the attention output and MLP-down are row-parallel."""
    h, f = model.hidden, model.ffn
    return (
        Matmul("qkv", h, model.q_dim + 2 * model.kv_dim, "column"),
        Matmul("attention_out", model.q_dim, h, "row"),
        Matmul("mlp_up", h, (model.ffn_matrices - 1) * f, "column"),
        Matmul("mlp_down", f, h, "row"),
    )


LAYERNORMS_PER_LAYER = 2


def layernorm_params(model: ModelSpec) -> int:
    """Weight and bias of each LayerNorm; tensor parallelism leaves them whole on every rank."""
    return LAYERNORMS_PER_LAYER * 2 * model.hidden


def final_layernorm_params(model: ModelSpec) -> int:
    """The LayerNorm after the last layer (on the last pipeline stage), weight and bias."""
    return 2 * model.hidden


def layer_params(model: ModelSpec) -> int:
    return sum(m.params for m in matmuls(model)) + layernorm_params(model)


def tp_replicated_layer_params(model: ModelSpec) -> int:
    return sum(m.tp_replicated_params for m in matmuls(model)) + layernorm_params(model)


@lru_cache(maxsize=4096)
def linear_flops_per_token(model: ModelSpec) -> int:
    return sum(m.flops_per_token for m in matmuls(model))


@lru_cache(maxsize=4096)
def attention_flops_per_token(model: ModelSpec) -> int:
    """softmax(QKᵀ)V per token: 2·s·d per head for QKᵀ and as much for ·V, counted in full (not
    halved for causal masking), the convention of Narayanan et al. 2021."""
    return 4 * model.seq * model.q_dim


# An eager rotary embedding of Q or K is 7 kernels: four products, two sums and the stack's copy
# (runtime/model/decoder.py apply_rotary; its slices are views).
_ROTARY_KERNELS = 7


@lru_cache(maxsize=4096)
def elementwise_ops(model: ModelSpec, dropout: float = 0.0) -> tuple[Elementwise, ...]:
    """The memory-bound work of one layer's forward. The activation reads its input(s) and writes
    one output: GeLU 2 passes over the FFN width, SwiGLU 3 (gate and up in, product out). xPos
    scales Q and K after the rotation (read, write). With dropout, Megatron's fused
    bias-dropout-add writes a 1-byte mask beside each residual add: half a 2-byte pass."""
    h, f = model.hidden, model.ffn
    swiglu = model.activation == "swiglu"
    ops = [
        Elementwise("layernorm", "layernorm", h, 2, LAYERNORMS_PER_LAYER, "sequence", 2, selective=True),
        Elementwise("residual_add", "residual_add", h, 3, 2, "sequence", 2),
        Elementwise(model.activation, "gelu", f, 3 if swiglu else 2, 1, "tensor", 1, selective=True),
    ]
    if model.position != "learned":     # learned positions are added once, to the embeddings
        ops.append(Elementwise("rotary", "rotary", model.q_dim + model.kv_dim, 2, 1, "tensor", 2 * _ROTARY_KERNELS))
    if model.position == "xpos":
        ops.append(Elementwise("xpos", "rotary", model.q_dim + model.kv_dim, 2, 1, "tensor", 2))
    if dropout > 0:
        ops.append(Elementwise("dropout_mask", "residual_add", h, 0.5, 2, "sequence", 0))
    return tuple(ops)


# Kernels of the forward that move no counted elements: the copy of attention's output back to
# (tokens × heads·d) layout.
OTHER_KERNELS_FWD = 1


@lru_cache(maxsize=4096)
def stored_tensors(model: ModelSpec, recompute: str, attention: str) -> tuple[Stored, ...]:
    """What one layer keeps for backward, in bytes per token (Korthikanti et al. 2022, eq. 1–5,
    generalised to any FFN width, SwiGLU and grouped-query attention); 2-byte activations,
    1-byte dropout masks.

    Full recompute keeps only the layer input. Selective recompute drops the unfused attention
    scores (the paper's selective recompute); under flash attention, which never stores the
    scores, it recomputes the LayerNorms and the activation instead (Megatron-Core), so their
    outputs — the inputs of QKV, MLP-up and MLP-down — are not kept."""
    h, f, kv, q = model.hidden, model.ffn, model.kv_dim, model.q_dim
    kept = [Stored("layer_input", 2 * h, "sequence")]
    if recompute == "full":
        return tuple(kept)
    lean = recompute == "selective" and attention == "flash"
    kept += [
        Stored("ln2_input", 2 * h, "sequence"),
        Stored("dropout_masks", 2 * h, "sequence"),
        Stored("q_k", 2 * (q + kv), "tensor"),
        Stored("v", 2 * kv, "tensor"),
        Stored("attention_out_input", 2 * q, "tensor"),
        # GeLU's input, or SwiGLU's gate and up outputs.
        Stored("activation_input", 2 * f * (model.ffn_matrices - 1), "tensor"),
    ]
    if not lean:
        kept += [Stored("qkv_input", 2 * h, "sequence"), Stored("mlp_up_input", 2 * h, "sequence"),
                 Stored("mlp_down_input", 2 * f, "tensor")]
    if attention == "unfused" and recompute == "none":
        # Softmax output (2 bytes), dropout mask (1) and dropout output (2) of the a×s×s scores.
        kept.append(Stored("attention_scores", 5 * model.heads * model.seq, "tensor"))
    if attention == "flash":
        # Flash attention keeps the softmax's log-sum-exp instead: fp32, one per head and token.
        kept.append(Stored("softmax_lse", 4 * model.heads, "tensor"))
    return tuple(kept)


@lru_cache(maxsize=4096)
def stored_bytes_per_token(model: ModelSpec, recompute: str, attention: str, tp: int,
                           sequence_parallel: bool) -> float:
    total = 0.0
    for t in stored_tensors(model, recompute, attention):
        total += t.bytes_per_token / tp if (t.placement == "tensor" or sequence_parallel) else t.bytes_per_token
    return total
