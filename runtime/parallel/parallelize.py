"""Apply a stage's layout on a DeviceMesh (pp, dp, tp), torchtitan-style, from outside the model.

- tensor parallel: Megatron's split with `parallelize_module` (Q, K, V, MLP-up and gate column-wise,
  attention output and MLP-down row-wise; the embedding and output layer vocabulary-parallel, so the logits
  stay split over the vocabulary into a parallel cross-entropy); LayerNorms and masks stay
  replicated (masks of heads and FFN neurons are sliced to the local shard); with sequence parallelism the
  LayerNorms and residuals work on a slice of the sequence (runtime/model/decoder.py gathers it before
  attention and the MLP, and the row-parallel outputs are reduce-scattered);
- pipeline parallel: the Decoder is cut into pp·v chunks (blocks keep their global names), run
  by torch.distributed.pipelining's 1F1B or interleaved 1F1B; the tied embedding of the first
  and last stage is kept in sync by an all-reduce of its gradient between them (as Megatron);
- data parallel: FSDP2 `fully_shard` (zero 3; zero 1–2 keep weights gathered between forward
  and backward) or `replicate` (zero 0).

Precision is precision.py's; blocks are compiled one by one (torchtitan's order: TP, recompute,
compile, FSDP).

NCCL on GPUs, gloo on CPU."""

from __future__ import annotations

import copy
import itertools

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from planner.errors import FlmplanError
from planner.model.specs import Layout, chunk_layers
from runtime.model.decoder import Decoder
from runtime.parallel.parallel_model import TP_PLAN, ParallelModel, pipeline_schedule, tied_embedding_group
from runtime.parallel.precision import Precision, sdpa_backends


def make_mesh(layout: Layout, device_type: str) -> DeviceMesh:
    world = dist.get_world_size()
    if layout.gpus != world:
        raise FlmplanError(f"tp·pp·dp = {layout.tp}·{layout.pp}·{layout.dp} = {layout.gpus} ≠ {world} processes.")
    return init_device_mesh(device_type, (layout.pp, layout.dp, layout.tp), mesh_dim_names=("pp", "dp", "tp"))


def split_for_pipeline(full: Decoder, chunk_ids: list[int], total_chunks: int,
                       ends_in_split: bool = False) -> list[Decoder]:
    """The model chunks `chunk_ids` of `total_chunks`, their blocks as the cost model counts them
    (planner/model/specs.py chunk_layers)."""
    starts = list(itertools.accumulate(chunk_layers(full.cfg.layers, total_chunks, ends_in_split), initial=0))
    ranges = [range(a, b) for a, b in itertools.pairwise(starts)]
    chunks = []
    for cid in chunk_ids:
        c = copy.deepcopy(full)
        keep = {str(i) for i in ranges[cid]}
        for key in [k for k in c.blocks if k not in keep]:
            del c.blocks[key]
        first, last = cid == 0, cid == total_chunks - 1
        c.takes_tokens = first
        if not last:
            c.ln_f = None
            c.head = None
            c.teacher = None
        # The last stage keeps a copy of a tied embedding for the output layer.
        if not (first or (last and full.cfg.tied_embeddings)):
            c.embed = None
        chunks.append(c)
    return chunks


class _SumForward(torch.autograd.Function):
    """Megatron's reduce-from-tensor-parallel region: all-reduce forward, identity backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        x = x.contiguous()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def shard_vocabulary(embed: nn.Embedding, tp_mesh: DeviceMesh) -> None:
    """Vocabulary-parallel embedding (Shoeybi et al. 2019, Megatron's VocabParallelEmbedding): each
    rank holds its slice of the rows, looks up the tokens that fall in it (zeros elsewhere), and the
    partial embeddings are summed over the group. The weight's gradient stays a slice, and the tied
    output layer (runtime/model/decoder.py) yields logits split over the vocabulary."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    weight = distribute_tensor(embed.weight, tp_mesh, [Shard(0)])
    embed.weight = nn.Parameter(weight)
    rows, offset = compute_local_shape_and_global_offset(weight.shape, tp_mesh, weight.placements)
    start, stop, group = offset[0], offset[0] + rows[0], tp_mesh.get_group()

    def lookup(tokens: torch.Tensor) -> torch.Tensor:
        w = embed.weight
        local = w.to_local() if isinstance(w, DTensor) else w
        outside = (tokens < start) | (tokens >= stop)
        part = F.embedding((tokens - start).masked_fill(outside, 0), local)
        return _SumForward.apply(part.masked_fill(outside.unsqueeze(-1), 0.0), group)

    embed.forward = lookup


def apply_tp(chunk: Decoder, tp_mesh: DeviceMesh, sequence_parallel: bool) -> None:
    # With sequence parallelism the row-parallel outputs are reduce-scattered along the sequence.
    row = RowwiseParallel(output_layouts=Shard(1)) if sequence_parallel else RowwiseParallel()
    plan = {k: ColwiseParallel() if v == "col" else row for k, v in TP_PLAN.items()}
    rank, size = tp_mesh.get_local_rank(), tp_mesh.size()
    group = tp_mesh.get_group() if sequence_parallel else None
    chunk.sp_group = group
    if chunk.embed is not None:
        shard_vocabulary(chunk.embed, tp_mesh)
    if chunk.head is not None:
        # Vocabulary-parallel output layer: rows split over tp, logits split over the vocabulary.
        chunk.head.weight = nn.Parameter(distribute_tensor(chunk.head.weight, tp_mesh, [Shard(0)]))
    for block in chunk.blocks.values():
        parallelize_module(block, tp_mesh, {k: v for k, v in plan.items() if _has_module(block, k)})
        block.tp_shard = (rank, size)
        block.tp_mesh, block.sequence_parallel = tp_mesh, sequence_parallel


def _has_module(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def apply_dp(chunk: Decoder, dp_mesh: DeviceMesh, zero: int, precision: Precision) -> nn.Module:
    if zero == 0:
        from torch.distributed._composable.replicate import replicate

        return replicate(chunk, device_mesh=dp_mesh)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # Weights gathered in the compute dtype, gradients reduced in fp32 (torchtitan's default).
    mp = MixedPrecisionPolicy(param_dtype=precision.compute, reduce_dtype=torch.float32)
    reshard = zero >= 3
    for block in chunk.blocks.values():
        fully_shard(block, mesh=dp_mesh, reshard_after_forward=reshard, mp_policy=mp)
    fully_shard(chunk, mesh=dp_mesh, reshard_after_forward=reshard, mp_policy=mp)
    return chunk


def apply_compile(chunk: Decoder) -> None:
    """torch.compile each block's forward (recompute included) in place: the module tree, its
    parameter names and FSDP's hooks stay as they are; the masks are inputs, so the ramp after a
    growth recompiles nothing."""
    for block in chunk.blocks.values():
        block.forward = torch.compile(block.forward)


def parallelize(full: Decoder, layout: Layout, mesh: DeviceMesh, device: torch.device,
                seed: int | None = None, precision: Precision | None = None,
                compile: bool = False) -> ParallelModel:
    """Cut, shard and wrap `full` for this rank of the mesh. `full` is identical on every rank,
    or built on the meta device (torchtitan's way for models too large to hold whole): then each
    rank allocates only its shards and initialises them (`seed` keeps the shards consistent)."""
    p, v = layout.pp, layout.interleave
    pp_rank = mesh.get_local_rank("pp")
    chunk_ids = [pp_rank + k * p for k in range(v)] if p > 1 else [0]
    chunks = split_for_pipeline(full, chunk_ids, p * v, layout.ends_in_split) if p > 1 else [full]
    on_meta = next(full.parameters()).is_meta
    precision = precision or Precision()
    for c in chunks:
        c.compute_dtype = precision.compute
        if not on_meta:
            c.to(device)
        # Full recompute re-runs each block's forward in backward; selective recompute only its
        # element-wise work (the attention scores a flash kernel never stores anyway).
        for block in c.blocks.values():
            block.recompute = layout.recompute
        if layout.tp > 1:
            apply_tp(c, mesh["tp"], layout.sequence_parallel)
        if compile:
            apply_compile(c)
        if layout.dp > 1:
            apply_dp(c, mesh["dp"], layout.zero, precision)
        if on_meta:
            c.to_empty(device=device)
            torch.manual_seed(seed or 0)
            with torch.no_grad():
                c.init_weights()
    pm = ParallelModel(layout=layout, mesh=mesh, chunks=chunks, chunk_ids=chunk_ids, device=device,
                       precision=precision, attention_backends=sdpa_backends(device, layout, precision))
    if p > 1:
        pm.schedule = pipeline_schedule(pm, p, v)
        if full.cfg.tied_embeddings:
            pm.tied_group = tied_embedding_group(mesh, p)
    return pm
