"""The things the cost model talks about: model shape, GPU, cluster and parallel layout.

Each spec checks itself where it is built and says in one sentence which field is wrong.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from functools import cache, cached_property
from importlib import resources
from typing import Literal, get_args

from planner.errors import FlmplanError, InvalidLayout
from planner.model import anatomy

Activation = Literal["gelu", "swiglu"]
Position = Literal["rotary", "xpos", "learned"]
Recompute = Literal["none", "selective", "full"]
AttentionKernel = Literal["flash", "unfused"]
ZeroStage = Literal[0, 1, 2, 3]

BYTES_PER_GIB = 2**30
# pydantic validates these dataclasses where case files and plans embed them (planner/layout/case.py,
# planner/plan/plan_file.py) and refuses unknown keys; a plain dict keeps this module free of pydantic.
_STRICT = {"extra": "forbid"}


def _one_of(values: tuple[str, ...]) -> str:
    """'a', 'b' or 'c': the allowed values of a field, as its refusal names them."""
    quoted = [repr(v) for v in values]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer (GPT / FLM style): the one model type of the planner, the case
    and plan files (validated by pydantic there) and the runtime (runtime/model/decoder.py extends it)."""

    __pydantic_config__ = _STRICT

    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int
    seq: int
    kv_heads: int | None = None
    activation: Activation = "gelu"
    tied_embeddings: bool = True
    # Rotary position embedding (Su et al. 2021), or rotary with xPos's decay (Sun et al. 2022),
    # which FLM-101B uses: an extra scale on Q and K. Or learned absolute position embeddings, added
    # to the token embeddings once (GPT-2/3; Megatron-LM's GPT, `learned_absolute`): no kernel in
    # the layers, a table of seq × hidden parameters.
    position: Position = "rotary"

    def __post_init__(self) -> None:
        for name in ("layers", "hidden", "heads", "ffn", "vocab", "seq"):
            if getattr(self, name) <= 0:
                raise FlmplanError(f"model.{name} must be a positive integer, got {getattr(self, name)}.")
        if self.hidden % self.heads and not self.sets_head_dim():
            raise FlmplanError(f"model.heads = {self.heads} must divide model.hidden = {self.hidden}.")
        if self.kv_heads is not None and (self.kv_heads <= 0 or self.heads % self.kv_heads):
            raise FlmplanError(f"model.kv_heads = {self.kv_heads} must divide model.heads = {self.heads}.")
        for name, kind in (("activation", Activation), ("position", Position)):
            if getattr(self, name) not in get_args(kind):
                raise FlmplanError(f"model.{name} must be {_one_of(get_args(kind))}, got {getattr(self, name)!r}.")

    def sets_head_dim(self) -> bool:
        """Whether the head width is set apart from hidden / heads (the runtime's MSG head growth)."""
        return False

    @cached_property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @cached_property
    def n_kv_heads(self) -> int:
        return self.kv_heads or self.heads

    @cached_property
    def kv_dim(self) -> int:
        """Width of K (and of V): smaller than hidden under grouped-query attention."""
        return self.n_kv_heads * self.head_dim

    @property
    def ffn_matrices(self) -> int:
        """GeLU MLP: up and down; SwiGLU: gate, up and down."""
        return 3 if self.activation == "swiglu" else 2

    @property
    def q_dim(self) -> int:
        """Width of Q and of the attention output: heads × head dim."""
        return self.heads * self.head_dim

    @cache  # noqa: B019 - specs are immutable and few; the planner asks for these millions of times
    def layer_params(self) -> int:
        """Weights and biases of one block: its matrices and two LayerNorms (planner/model/anatomy.py)."""
        return anatomy.layer_params(self)

    @cache  # noqa: B019
    def tp_replicated_layer_params(self) -> int:
        """What tensor parallelism leaves whole on every rank of a block (Megatron, and flmplan's
        runtime): the LayerNorms and the biases of the row-parallel matrices."""
        return anatomy.tp_replicated_layer_params(self)

    def embedding_params(self) -> int:
        """Token embedding (and the output head, unless tied; and learned positions' table) plus the
        final LayerNorm."""
        head = 0 if self.tied_embeddings else self.vocab * self.hidden
        positions = self.seq * self.hidden if self.position == "learned" else 0
        return self.vocab * self.hidden + head + positions + 2 * self.hidden

    @cache  # noqa: B019
    def params(self) -> int:
        return self.layers * self.layer_params() + self.embedding_params()

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Software:
    """Facts about the training software that change what a step costs, as a run's source states
    them; the defaults are today's stacks (flmplan's runtime, Megatron-Core, torchtitan)."""

    # FlashAttention-2 runs about twice as fast as FlashAttention (v1) on A100s (Dao 2023,
    # arXiv 2307.08691: v1 reaches 25–40 % of peak, v2 50–73 %).
    flash_attention: Literal[1, 2] = 2
    # The data-parallel gradient reduction runs under the backward (Megatron-LM's
    # --overlap-grad-reduce since September 2023, FSDP). Before it, Megatron's distributed
    # optimizer reduce-scattered all gradients after the backward (NVIDIA/Megatron-LM#391).
    overlap_grad_reduce: bool = True
    # The distributed optimizer's all-gather of the updated weights runs under the next step's forward,
    # bucket by bucket (Megatron-LM's --overlap-param-gather since November 2023, commit f048bf8).
    # Before it, the gather followed the optimizer step on the critical path.
    overlap_param_gather: bool = True
    # Dropout probability on the residual branches and the embedding (and inside attention).
    dropout: float = 0.0
    # Each block under torch.compile (flmplan's runtime on GPUs by default): its element-wise ops
    # fused, each moving what the op must at the fastest element-wise kernel the profile measured,
    # not at its own eager kernel's (a profile's points are eager). Launches and their issue are
    # charged as eager. False: eager PyTorch, or kernels a profile without per-op points describes.
    compiled: bool = False
    # Bytes per gradient element in the data-parallel reduction: fp32 in Megatron-LM with bf16 and in
    # FSDP's usual mixed precision (Composer's DEFAULT: reduce_dtype fp32); the compute dtype's 2 under
    # pure bf16 (Composer's PURE: param, reduce and buffer dtypes all bf16).
    grad_reduce_bytes: Literal[2, 4] = 4

    def __post_init__(self) -> None:
        if self.grad_reduce_bytes not in (2, 4):
            raise FlmplanError(f"software.grad_reduce_bytes must be 2 or 4, got {self.grad_reduce_bytes!r}.")
        if self.flash_attention not in (1, 2):
            raise FlmplanError(f"software.flash_attention must be 1 or 2, got {self.flash_attention!r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise FlmplanError(f"software.dropout must be in [0, 1), got {self.dropout!r}.")


@dataclass(frozen=True)
class Price:
    usd_per_gpu_hour: float
    date: str
    source: str


@dataclass(frozen=True)
class GpuSpec:
    """One GPU type of the catalog (planner/data/gpus.json)."""

    key: str
    name: str
    peak_tflops_bf16: float
    memory_gib: float
    hbm_tbps: float
    nvlink_gbps: float
    network_gbps: float
    gpus_per_node: int
    price: Price


@cache
def gpu_catalog() -> dict[str, GpuSpec]:
    raw = json.loads(resources.files("planner").joinpath("data/gpus.json").read_text())
    return {
        key: GpuSpec(key=key, **{**g, "price": Price(**g["price"])}) for key, g in raw["gpus"].items()
    }


def gpu_for_device(device_name: str) -> GpuSpec | None:
    """The catalog GPU a device name (torch.cuda.get_device_name) belongs to: the family and
    memory size when the name has it, else the family alone; None for other devices."""
    name = device_name.lower().replace("-", " ")
    family_only = None
    for key, gpu in gpu_catalog().items():
        family, _, size = key.partition("-")
        if family in name.split() or f" {family}" in f" {name}":
            if size and size.removesuffix("gb") in name:
                return gpu
            family_only = family_only or gpu
    return family_only


def get_gpu(key: str) -> GpuSpec:
    """The catalog's GPU by its key, in any case, or by its family alone where the catalog has one of
    that family (h100 is h100-80gb; a100 is refused, naming a100-40gb and a100-80gb)."""
    catalog = gpu_catalog()
    name = key.strip().lower()
    if name in catalog:
        return catalog[name]
    family = [k for k in catalog if k.split("-")[0] == name]
    if len(family) == 1:
        return catalog[family[0]]
    if family:
        raise FlmplanError(f"GPU {key!r} is {' or '.join(family)}; give one of them.")
    raise FlmplanError(f"Unknown GPU {key!r}; choose one of: {', '.join(catalog)}.")


@dataclass(frozen=True)
class ClusterSpec:
    gpu: GpuSpec
    gpus: int
    gpus_per_node: int = 8

    @classmethod
    def on(cls, gpu: GpuSpec, gpus: int) -> ClusterSpec:
        """`gpus` GPUs of one type in whole nodes, or in one part-filled node when there are fewer."""
        return cls(gpu=gpu, gpus=gpus, gpus_per_node=min(gpu.gpus_per_node, max(gpus, 1)))

    def __post_init__(self) -> None:
        if self.gpus <= 0:
            raise FlmplanError(f"cluster.gpus must be positive, got {self.gpus}.")
        if self.gpus_per_node <= 0:
            raise FlmplanError(f"cluster.gpus_per_node must be positive, got {self.gpus_per_node}.")
        if self.gpus > self.gpus_per_node and self.gpus % self.gpus_per_node:
            raise FlmplanError(
                f"cluster.gpus = {self.gpus} is not a whole number of nodes of {self.gpus_per_node} GPUs."
            )

    @property
    def nodes(self) -> int:
        return max(1, self.gpus // self.gpus_per_node)


@dataclass(frozen=True)
class Layout:
    """A 3-D parallel layout (Megatron-LM conventions) plus recompute and sharding.

    interleave is the number of model chunks per pipeline stage (virtual stages, v);
    zero is the ZeRO stage: 1 = sharded optimizer (Megatron's distributed optimizer),
    2 = + sharded gradients, 3 = + sharded weights (FSDP FULL_SHARD).
    """

    tp: int
    pp: int
    dp: int
    micro_batch: int
    global_batch: int
    recompute: Recompute = "none"
    sequence_parallel: bool = False
    interleave: int = 1
    zero: ZeroStage = 1
    attention: AttentionKernel = "flash"
    # The embedding and the output layer count as one layer each in the pipeline split, so the first
    # and last stages hold one transformer layer fewer (Megatron-LM's --account-for-embedding-in-pipeline-split
    # and --account-for-loss-in-pipeline-split since 2024-09, commit fa8bb59; Llama 3 405B, GLM-130B).
    ends_in_split: bool = False

    __pydantic_config__ = _STRICT

    def __post_init__(self) -> None:
        """Each field on its own; validate_layout checks the layout against a model and cluster."""
        if min(self.tp, self.pp, self.dp, self.micro_batch, self.global_batch, self.interleave) < 1:
            name = next(n for n in ("tp", "pp", "dp", "micro_batch", "global_batch", "interleave")
                        if getattr(self, n) < 1)
            raise InvalidLayout(f"parallel.{name} must be at least 1, got {getattr(self, name)}.")
        if self.recompute not in ("none", "selective", "full"):
            raise InvalidLayout(f"parallel.recompute must be none, selective or full, got {self.recompute!r}.")
        if self.zero not in (0, 1, 2, 3):
            raise InvalidLayout(f"parallel.zero must be 0, 1, 2 or 3, got {self.zero}.")
        if self.attention not in ("flash", "unfused"):
            raise InvalidLayout(f"attention kernel must be 'flash' or 'unfused', got {self.attention!r}.")

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def micro_batches(self) -> int:
        """Micro-batches per pipeline per step (m in Narayanan et al. 2021)."""
        return self.global_batch // (self.micro_batch * self.dp)

    def with_(self, **changes) -> Layout:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """The one notation of a layout in flmplan's output (LAYOUT_LEGEND says what it means)."""
        parts = [f"tp{self.tp}", f"pp{self.pp}", f"dp{self.dp}", f"mb{self.micro_batch}"]
        if self.interleave > 1:
            parts.append(f"v{self.interleave}")
        if self.ends_in_split:
            parts.append("ends")
        if self.sequence_parallel:
            parts.append("sp")
        parts += [f"zero{self.zero}", f"rc:{self.recompute}"]
        return " ".join(parts)


def chunk_layers(layers: int, chunks: int, ends_in_split: bool = False) -> list[int]:
    """Transformer layers of each pipeline chunk, in order: as even as possible, earlier chunks taking the
    remainder; with `ends_in_split` the embedding and the output layer take a layer's place each in the
    first and the last chunk (a chunk may then hold only an end)."""
    base, extra = divmod(layers + (2 if ends_in_split else 0), chunks)
    counts = [base + (1 if c < extra else 0) for c in range(chunks)]
    if ends_in_split:
        counts[0] -= 1
        counts[-1] -= 1
    return counts


def stage_layers(layers: int, layout: Layout) -> list[int]:
    """Transformer layers each pipeline stage holds: stage s runs chunks s, s + pp, … (Megatron-LM's
    interleaved assignment)."""
    counts = chunk_layers(layers, layout.pp * layout.interleave, layout.ends_in_split)
    return [sum(counts[s::layout.pp]) for s in range(layout.pp)]


LAYOUT_LEGEND = ("Layouts: tp, pp, dp = tensor-, pipeline- and data-parallel degrees; mb = sequences per "
                 "micro-batch; v = pipeline chunks per GPU (interleaving); ends = the embedding and the output layer "
                 "count as a layer each in the pipeline split; sp = sequence parallelism; zero = ZeRO "
                 "stage (1 optimizer state, 2 + gradients, 3 + weights sharded over dp); rc = activation recompute.")


def validate_layout(model: ModelSpec, cluster: ClusterSpec, layout: Layout) -> None:
    """Refuse a layout that cannot run, naming the field and the numbers."""
    lay = layout
    if lay.gpus != cluster.gpus:
        raise InvalidLayout(
            f"parallel: tp·pp·dp = {lay.tp}·{lay.pp}·{lay.dp} = {lay.gpus} ≠ {cluster.gpus} GPUs of the cluster."
        )
    if model.heads % lay.tp:
        raise InvalidLayout(f"parallel.tp = {lay.tp} does not divide the {model.heads} attention heads.")
    if model.n_kv_heads % lay.tp:
        raise InvalidLayout(f"parallel.tp = {lay.tp} does not divide the {model.n_kv_heads} key/value heads.")
    if model.ffn % lay.tp:
        raise InvalidLayout(f"parallel.tp = {lay.tp} does not divide model.ffn = {model.ffn}.")
    if lay.tp > cluster.gpus_per_node:
        raise InvalidLayout(
            f"parallel.tp = {lay.tp} is larger than a node ({cluster.gpus_per_node} GPUs); "
            "tensor parallelism needs NVLink."
        )
    if lay.pp > model.layers:
        raise InvalidLayout(f"parallel.pp = {lay.pp} is larger than the {model.layers} layers.")
    slots = model.layers + (2 if lay.ends_in_split else 0)
    if lay.pp * lay.interleave > slots:
        raise InvalidLayout(
            f"parallel.interleave = {lay.interleave} with pp = {lay.pp} needs "
            f"{lay.pp * lay.interleave} layer chunks but the model has {model.layers} layers"
            + (" and its two ends." if lay.ends_in_split else ".")
        )
    if lay.ends_in_split and lay.pp == 1:
        raise InvalidLayout("parallel.ends_in_split needs pipeline parallelism (pp ≥ 2).")
    # Megatron-LM's rule with its ends counted: the layers and the two ends split evenly over the stages,
    # and each stage's share evenly over its chunks.
    if lay.ends_in_split and slots % (lay.pp * lay.interleave):
        raise InvalidLayout(
            f"parallel.ends_in_split needs the {model.layers} layers and the two ends ({slots}) to split evenly "
            f"into pp·interleave = {lay.pp * lay.interleave} chunks.")
    if lay.interleave > 1 and lay.pp == 1:
        raise InvalidLayout("parallel.interleave > 1 needs pipeline parallelism (pp ≥ 2).")
    if lay.global_batch % (lay.micro_batch * lay.dp):
        raise InvalidLayout(
            f"parallel.global_batch = {lay.global_batch} is not divisible by "
            f"micro_batch·dp = {lay.micro_batch}·{lay.dp} = {lay.micro_batch * lay.dp}; the sequences left "
            "over would never be trained."
        )
    if lay.interleave > 1 and lay.micro_batches % lay.pp:
        raise InvalidLayout(
            f"parallel.interleave needs the {lay.micro_batches} micro-batches per pipeline "
            f"to be a multiple of pp = {lay.pp}."
        )
    if lay.zero == 3 and lay.pp > 1:
        raise InvalidLayout("parallel.zero = 3 (fully sharded weights) is not combined with pp > 1 here.")
    if lay.sequence_parallel and lay.tp == 1:
        raise InvalidLayout("parallel.sequence_parallel needs tp ≥ 2.")
