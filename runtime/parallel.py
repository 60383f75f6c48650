"""Apply a stage's layout on a DeviceMesh (pp, dp, tp), torchtitan-style, from outside the model.

- tensor parallel: Megatron's split with `parallelize_module` (Q, K, V and MLP-up column-wise,
  attention output and MLP-down row-wise); the embedding, LayerNorms and masks stay replicated
  (masks of heads and FFN neurons are sliced to the local shard); with sequence parallelism the
  LayerNorms and residuals work on a slice of the sequence (runtime/model.py gathers it before
  attention and the MLP, and the row-parallel outputs are reduce-scattered);
- pipeline parallel: the Decoder is cut into pp·v chunks (blocks keep their global names), run
  by torch.distributed.pipelining's 1F1B or interleaved 1F1B; the tied embedding of the first
  and last stage is kept in sync by an all-reduce of its gradient between them (as Megatron);
- data parallel: FSDP2 `fully_shard` (zero 3; zero 1–2 keep weights gathered between forward
  and backward) or `replicate` (zero 0).

NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from planner.specs import Layout
from runtime.model import Decoder, causal_lm_loss

TP_PLAN = {"attn.q": "col", "attn.k": "col", "attn.v": "col", "attn.o": "row", "mlp.up": "col", "mlp.down": "row"}


def make_mesh(layout: Layout, device_type: str) -> DeviceMesh:
    world = dist.get_world_size()
    if layout.gpus != world:
        raise ValueError(f"tp·pp·dp = {layout.tp}·{layout.pp}·{layout.dp} = {layout.gpus} ≠ {world} processes")
    return init_device_mesh(device_type, (layout.pp, layout.dp, layout.tp), mesh_dim_names=("pp", "dp", "tp"))


@dataclass
class ParallelModel:
    """The local part of a model under a layout, and how to run one optimizer step's batch."""

    layout: Layout
    mesh: DeviceMesh
    chunks: list[Decoder]
    chunk_ids: list[int]
    device: torch.device
    schedule: object | None = None
    tied_group: object | None = None
    extra: dict = field(default_factory=dict)

    @property
    def pp_rank(self) -> int:
        return self.mesh.get_local_rank("pp")

    @property
    def dp_rank(self) -> int:
        return self.mesh.get_local_rank("dp")

    @property
    def is_first(self) -> bool:
        return 0 in self.chunk_ids

    @property
    def is_last(self) -> bool:
        return self.layout.pp * self.layout.interleave - 1 in self.chunk_ids

    def parameters(self) -> list[nn.Parameter]:
        return [p for c in self.chunks for p in c.parameters()]

    def named_parameters(self) -> dict[str, nn.Parameter]:
        out = {}
        for c in self.chunks:
            out.update(dict(c.named_parameters()))
        return out

    def train_batch(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Forward and backward of this rank's share of one global batch; returns the batch's
        mean loss (the same on every rank)."""
        lay = self.layout
        inputs, targets = inputs.to(self.device), targets.to(self.device)
        m = inputs.shape[0] // lay.micro_batch
        if lay.pp == 1:
            model = self.chunks[0]
            total = torch.zeros((), device=self.device)
            for i in range(m):
                sl = slice(i * lay.micro_batch, (i + 1) * lay.micro_batch)
                if hasattr(model, "set_requires_gradient_sync"):
                    model.set_requires_gradient_sync(i == m - 1)
                loss = causal_lm_loss(model(inputs[sl]), targets[sl])
                (loss / m).backward()
                total += loss.detach()
            local = total / m
        else:
            losses: list[torch.Tensor] = []
            args = (inputs,) if self.is_first else ()
            if self.is_last:
                self.schedule.step(*args, target=targets, losses=losses)
            else:
                self.schedule.step(*args)
            local = torch.stack(losses).mean().detach() if losses else torch.zeros((), device=self.device)
            # Only the last stage saw the losses: share them along the pipeline.
            dist.all_reduce(local, group=self.mesh.get_group("pp"))
            if self.tied_group is not None:
                self._sync_tied_embedding()
        if lay.sequence_parallel and lay.tp > 1:
            self._sync_sequence_parallel_grads()
        if lay.dp > 1:
            dist.all_reduce(local, op=dist.ReduceOp.AVG, group=self.mesh.get_group("dp"))
        return local

    def _sync_sequence_parallel_grads(self) -> None:
        """LayerNorm weights, replicated over tp, saw only this rank's slice of the sequence under
        sequence parallelism: sum their gradients over the tp group (as Megatron). The embedding
        gets the whole sequence's gradient through scatter_sequence's backward."""
        group = self.mesh.get_group("tp")
        for c in self.chunks:
            for name, p in c.named_parameters():
                module = name.rsplit(".", 1)[0]
                if p.grad is None or name.startswith("embed.") or any(module.endswith(k) for k in TP_PLAN):
                    continue
                g = p.grad
                dist.all_reduce(g.to_local() if isinstance(g, DTensor) else g, group=group)

    def _sync_tied_embedding(self) -> None:
        for c in self.chunks:
            if c.embed is not None and c.embed.weight.grad is not None:
                g = c.embed.weight.grad
                dist.all_reduce(g.to_local() if isinstance(g, DTensor) else g, group=self.tied_group)

    def clip_grad_norm(self, max_norm: float) -> float:
        """Global gradient norm over every shard and stage, counting the tied embedding once."""
        sq = torch.zeros((), device=self.device, dtype=torch.float32)
        for c, cid in zip(self.chunks, self.chunk_ids, strict=True):
            for name, p in c.named_parameters():
                if p.grad is None or (name.startswith("embed.") and self.layout.pp > 1 and cid != 0):
                    continue
                g = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
                sq += g.float().pow(2).sum()
        if self.layout.pp > 1:
            dist.all_reduce(sq, group=self.mesh.get_group("pp"))
        norm = float(sq.sqrt())
        scale = max_norm / (norm + 1e-6)
        if scale < 1.0:
            for p in self.parameters():
                if p.grad is not None:
                    p.grad.mul_(scale)
        return norm


def chunk_layers(layers: int, chunks: int) -> list[range]:
    """Blocks of each pipeline chunk: as even as possible, earlier chunks take the remainder."""
    base, extra = divmod(layers, chunks)
    out, start = [], 0
    for c in range(chunks):
        n = base + (1 if c < extra else 0)
        out.append(range(start, start + n))
        start += n
    return out


def split_for_pipeline(full: Decoder, chunk_ids: list[int], total_chunks: int) -> list[Decoder]:
    ranges = chunk_layers(full.cfg.layers, total_chunks)
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
        if not (first or last):
            c.embed = None
        chunks.append(c)
    return chunks


def apply_tp(chunk: Decoder, tp_mesh: DeviceMesh, sequence_parallel: bool) -> None:
    # With sequence parallelism the row-parallel outputs are reduce-scattered along the sequence.
    row = RowwiseParallel(output_layouts=Shard(1)) if sequence_parallel else RowwiseParallel()
    plan = {k: ColwiseParallel() if v == "col" else row for k, v in TP_PLAN.items()}
    rank, size = tp_mesh.get_local_rank(), tp_mesh.size()
    group = tp_mesh.get_group() if sequence_parallel else None
    chunk.sp_group = group
    for block in chunk.blocks.values():
        parallelize_module(block, tp_mesh, plan)
        block.tp_shard = (rank, size)
        block.sp_group = group


def apply_dp(chunk: Decoder, dp_mesh: DeviceMesh, zero: int) -> nn.Module:
    if zero == 0:
        from torch.distributed._composable.replicate import replicate

        return replicate(chunk, device_mesh=dp_mesh)
    from torch.distributed.fsdp import fully_shard

    reshard = zero >= 3
    for block in chunk.blocks.values():
        fully_shard(block, mesh=dp_mesh, reshard_after_forward=reshard)
    fully_shard(chunk, mesh=dp_mesh, reshard_after_forward=reshard)
    return chunk


def parallelize(full: Decoder, layout: Layout, mesh: DeviceMesh, device: torch.device,
                seed: int | None = None) -> ParallelModel:
    """Cut, shard and wrap `full` for this rank of the mesh. `full` is identical on every rank,
    or built on the meta device (torchtitan's way for models too large to hold whole): then each
    rank allocates only its shards and initialises them (`seed` keeps the shards consistent)."""
    p, v = layout.pp, layout.interleave
    pp_rank = mesh.get_local_rank("pp")
    chunk_ids = [pp_rank + k * p for k in range(v)] if p > 1 else [0]
    chunks = split_for_pipeline(full, chunk_ids, p * v) if p > 1 else [full]
    on_meta = next(full.parameters()).is_meta
    for c in chunks:
        if not on_meta:
            c.to(device)
        # Full recompute re-runs each block's forward in backward; selective recompute only its
        # element-wise work (the attention scores a flash kernel never stores anyway).
        for block in c.blocks.values():
            block.recompute = layout.recompute
        if layout.tp > 1:
            apply_tp(c, mesh["tp"], layout.sequence_parallel)
        if layout.dp > 1:
            apply_dp(c, mesh["dp"], layout.zero)
        if on_meta:
            c.to_empty(device=device)
            torch.manual_seed(seed or 0)
            with torch.no_grad():
                c.init_weights()
    pm = ParallelModel(layout=layout, mesh=mesh, chunks=chunks, chunk_ids=chunk_ids, device=device)
    if p > 1:
        pm.schedule = _pipeline_schedule(pm, p, v)
        pm.tied_group = _tied_group(mesh, p)
    return pm


def _pipeline_schedule(pm: ParallelModel, p: int, v: int):
    from torch.distributed.pipelining import PipelineStage
    from torch.distributed.pipelining.schedules import Schedule1F1B, ScheduleInterleaved1F1B

    lay = pm.layout
    group = pm.mesh.get_group("pp")
    stages = [PipelineStage(c, cid, p * v, pm.device, group=group) for c, cid in zip(pm.chunks, pm.chunk_ids,
                                                                                  strict=True)]
    m = lay.global_batch // lay.dp // lay.micro_batch
    if v > 1:
        return ScheduleInterleaved1F1B(stages, n_microbatches=m, loss_fn=causal_lm_loss)
    return Schedule1F1B(stages[0], n_microbatches=m, loss_fn=causal_lm_loss)


def _tied_group(mesh: DeviceMesh, p: int):
    """For every (dp, tp) coordinate, the ranks of the first and last pipeline stage."""
    ranks = mesh.mesh  # (pp, dp, tp) tensor of global ranks
    mine = None
    me = dist.get_rank()
    for d in range(ranks.shape[1]):
        for t in range(ranks.shape[2]):
            pair = [int(ranks[0, d, t]), int(ranks[p - 1, d, t])]
            g = dist.new_group(pair)
            if me in pair:
                mine = g
    return mine
