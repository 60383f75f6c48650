"""The local part of a model under a layout (`ParallelModel`) and how it runs one optimizer step's batch:
its micro-batches through the pipeline schedule (1F1B or interleaved) or straight through, the
loss scaled for fp16, the tied embedding's gradient kept in sync between the first and last stage."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate
from torch.distributed.tensor.parallel import loss_parallel

from planner.model.specs import Layout
from runtime.model.decoder import Decoder, causal_lm_loss
from runtime.objectives.freelm import accuracy
from runtime.parallel.precision import Precision

# Megatron's tensor-parallel split of a block: column-wise (Q, K, V, MLP up and gate), row-wise (the rest).
TP_PLAN = {"attn.q": "col", "attn.k": "col", "attn.v": "col", "attn.o": "row", "mlp.up": "col", "mlp.gate": "col",
           "mlp.down": "row"}


@dataclass
class ParallelModel:
    """The local part of a model under a layout, and how to run one optimizer step's batch."""

    layout: Layout
    mesh: DeviceMesh
    chunks: list[Decoder]
    chunk_ids: list[int]
    device: torch.device
    precision: Precision
    attention_backends: list
    schedule: object | None = None
    tied_group: object | None = None
    schedules: dict = field(default_factory=dict)       # pipeline schedules of other signals (FreeLM's)
    teacher_accuracy: torch.Tensor | None = None

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

    def state_bytes(self, optimizers: list[torch.optim.Optimizer]) -> dict[str, int]:
        """Bytes this rank holds of parameters, gradients and optimizer state (its local shards),
        to set beside what planner/model/memory.py charges for the same layout."""

        def nbytes(t: torch.Tensor) -> int:
            t = t.to_local() if isinstance(t, DTensor) else t
            return t.numel() * t.element_size()

        params = self.parameters()
        return {"params": sum(nbytes(p) for p in params),
                "grads": sum(nbytes(p.grad) for p in params if p.grad is not None),
                "optimizer": sum(nbytes(v) for o in optimizers for st in o.state.values() for v in st.values()
                                 if torch.is_tensor(v) and v.dim() > 0)}

    @contextmanager
    def kernels(self):
        """The attention kernels of the layout, and the vocabulary-parallel cross-entropy under tp."""
        from torch.nn.attention import sdpa_kernel

        with sdpa_kernel(self.attention_backends), (loss_parallel() if self.layout.tp > 1 else nullcontext()):
            yield

    def train_batch(self, inputs: torch.Tensor, targets: torch.Tensor, signal: str = "language") -> torch.Tensor:
        """Forward and backward of this rank's share of one global batch, in micro-batches with
        gradient accumulation; returns the batch's mean loss (the same on every rank) as a device
        tensor — nothing here waits for the GPU. `signal` "teacher" trains FreeLM's head on a
        batch of propositions (runtime/objectives/freelm.py) and leaves its accuracy in `teacher_accuracy`."""
        lay = self.layout
        inputs = inputs.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        m = inputs.shape[0] // lay.micro_batch
        scale = self.precision.scale
        teacher = signal == "teacher"
        for c in self.chunks:
            c.signal = signal
        accuracies: list[torch.Tensor] = []
        with self.kernels():
            if lay.pp == 1:
                model = self.chunks[0]
                total = torch.zeros((), device=self.device)
                for i in range(m):
                    sl = slice(i * lay.micro_batch, (i + 1) * lay.micro_batch)
                    if hasattr(model, "set_requires_gradient_sync"):
                        model.set_requires_gradient_sync(i == m - 1)
                    logits = model(inputs[sl])
                    loss = causal_lm_loss(logits, targets[sl])
                    if teacher:
                        accuracies.append(accuracy(logits.detach(), targets[sl]))
                    (loss * (scale / m)).backward()
                    total += _plain(loss.detach())
                local = total / m
            else:
                losses: list[torch.Tensor] = []
                args = (inputs,) if self.is_first else ()
                schedule = self.schedule_for(signal)
                schedule._loss_fn = _scaled_loss(scale, accuracies if teacher else None)
                if self.is_last:
                    schedule.step(*args, target=targets, losses=losses)
                else:
                    schedule.step(*args)
                local = (torch.stack([_plain(x.detach()) for x in losses]).mean() / scale if losses
                         else torch.zeros((), device=self.device))
            # The last m: a schedule's first step may call the loss function once more (shape inference).
            acc = torch.stack(accuracies[-m:]).mean() if accuracies else torch.zeros((), device=self.device)
            # Only the last stage saw the losses: share them along the pipeline.
            local = torch.stack([local, acc])
            dist.all_reduce(local, group=self.mesh.get_group("pp"))
            if self.tied_group is not None:
                self._sync_tied_embedding()
        for c in self.chunks:
            c.signal = "language"
        if lay.sequence_parallel and lay.tp > 1:
            self._sync_sequence_parallel_grads()
        if lay.dp > 1:
            dist.all_reduce(local, op=dist.ReduceOp.AVG, group=self.mesh.get_group("dp"))
        self.teacher_accuracy = local[1] if teacher else None
        return local[0]

    def schedule_for(self, signal: str):
        """The pipeline schedule of a signal: the teacher head's output has another shape than the
        language logits, and a schedule checks each stage's outputs against the first it saw."""
        if signal == "language":
            return self.schedule
        if signal not in self.schedules:
            self.schedules[signal] = pipeline_schedule(self, self.layout.pp, self.layout.interleave)
        return self.schedules[signal]

    def _sync_sequence_parallel_grads(self) -> None:
        """LayerNorm weights, replicated over tp, saw only this rank's slice of the sequence under
        sequence parallelism: sum their gradients over the tp group (as Megatron). The embedding
        gets the whole sequence's gradient through scatter_sequence's backward. One all-reduce of
        them all, flattened, per step (Megatron-LM's `_allreduce_layernorm_grads`): one per tensor
        would pay the collective's latency some 4·layers times."""
        grads: dict[torch.dtype, list[torch.Tensor]] = {}
        for c in self.chunks:
            for name, p in c.named_parameters():
                module = name.rsplit(".", 1)[0]
                # The teacher head reads the gathered sequence: its gradient is already whole on every rank.
                if p.grad is None or name.startswith(("embed.", "head.", "teacher.")) or \
                        any(module.endswith(k) for k in TP_PLAN):
                    continue
                g = p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
                grads.setdefault(g.dtype, []).append(g)
        for same in grads.values():
            flat = torch.cat([g.reshape(-1) for g in same])
            dist.all_reduce(flat, group=self.mesh.get_group("tp"))
            torch._foreach_copy_(same, [f.view_as(g) for f, g in zip(flat.split([g.numel() for g in same]), same,
                                                                           strict=True)])

    def _sync_tied_embedding(self) -> None:
        """Sum the tied embedding's gradient between the first and the last stage. A teacher batch
        (FreeLM) leaves the last stage's copy without one: it joins with zeros."""
        for c in self.chunks:
            if c.embed is not None:
                w = c.embed.weight
                if w.grad is None:
                    w.grad = torch.zeros_like(w)
                g = w.grad
                dist.all_reduce(g.to_local() if isinstance(g, DTensor) else g, group=self.tied_group)

    def grad_norm(self) -> torch.Tensor:
        """Global gradient norm over every shard and stage, as a device tensor (no host sync).
        Each rank adds the squares of its local pieces, divided by how many ranks hold the same
        piece (replicated over tp or dp), and one all-reduce over the world sums them; the tied
        embedding of the last pipeline stage is counted once, on the first. The norms are taken
        with one multi-tensor call per replication count (as Megatron-LM's multi_tensor_l2norm
        and torch's clip_grad_norm_ do), not a few kernels per tensor."""
        sizes = {"dp": self.layout.dp, "tp": self.layout.tp}
        by_copies: dict[int, list[torch.Tensor]] = {}
        for c, cid in zip(self.chunks, self.chunk_ids, strict=True):
            for name, p in c.named_parameters():
                if p.grad is None or (name.startswith("embed.") and self.layout.pp > 1 and cid != 0):
                    continue
                g = p.grad
                copies = sizes["dp"] * sizes["tp"]
                if isinstance(g, DTensor):
                    # Sharded (Shard, or FSDP's _StridedShard over a tp shard) along a mesh dim: no copies there.
                    for dim_name, placement in zip(g.device_mesh.mesh_dim_names or (), g.placements, strict=True):
                        if not isinstance(placement, Replicate) and dim_name in sizes:
                            copies //= sizes[dim_name]
                    g = g.to_local()
                by_copies.setdefault(copies, []).append(g)
        sq = torch.zeros((), device=self.device, dtype=torch.float32)
        for copies, grads in by_copies.items():
            norms = torch._foreach_norm(grads, 2, dtype=torch.float32)
            sq += torch.stack(norms).square().sum() / copies
        if dist.get_world_size() > 1:
            dist.all_reduce(sq)
        return sq.sqrt()

    def clip_and_unscale(self, max_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Undo the loss scale and clip to `max_norm` in one multiply; returns (norm of the true
        gradients, overflow flag), both device tensors. On overflow (fp16) the step must be skipped."""
        norm = self.grad_norm() / self.precision.scale
        overflow = ~torch.isfinite(norm)
        factor = torch.clamp(max_norm / (norm + 1e-6), max=1.0) / self.precision.scale
        grads = [p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
                 for p in self.parameters() if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, factor)
        return norm, overflow


def _plain(t: torch.Tensor) -> torch.Tensor:
    """A replicated DTensor (the parallel cross-entropy's loss) as the plain tensor every rank holds."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def _scaled_loss(scale: float, accuracies: list | None = None):
    """The pipeline's loss function; with `accuracies` it also keeps each teacher micro-batch's accuracy."""
    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if accuracies is not None:
            accuracies.append(accuracy(logits.detach(), targets))
        return causal_lm_loss(logits, targets) * scale

    return loss_fn


def pipeline_schedule(pm: ParallelModel, p: int, v: int):
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


def tied_embedding_group(mesh: DeviceMesh, p: int):
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
