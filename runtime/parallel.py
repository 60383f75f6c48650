"""Apply a stage's layout on a DeviceMesh (pp, dp, tp), torchtitan-style, from outside the model.

- tensor parallel: Megatron's split with `parallelize_module` (Q, K, V, MLP-up and gate column-wise,
  attention output and MLP-down row-wise; the embedding and output layer vocabulary-parallel, so the logits
  stay split over the vocabulary into a parallel cross-entropy); LayerNorms and masks stay
  replicated (masks of heads and FFN neurons are sliced to the local shard); with sequence parallelism the
  LayerNorms and residuals work on a slice of the sequence (runtime/model.py gathers it before
  attention and the MLP, and the row-parallel outputs are reduce-scattered);
- pipeline parallel: the Decoder is cut into pp·v chunks (blocks keep their global names), run
  by torch.distributed.pipelining's 1F1B or interleaved 1F1B; the tied embedding of the first
  and last stage is kept in sync by an all-reduce of its gradient between them (as Megatron);
- data parallel: FSDP2 `fully_shard` (zero 3; zero 1–2 keep weights gathered between forward
  and backward) or `replicate` (zero 0).

Precision (`Precision`): the parameters, gradients and Adam state are fp32 on every layout (the
master weights); the forward runs under autocast in bf16 (or fp16 with dynamic loss scaling),
and where FSDP shards, its MixedPrecisionPolicy gathers bf16 weights and reduces fp32
gradients. Blocks are compiled one by one (torchtitan's order: TP, recompute, compile, FSDP).

NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import copy
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, loss_parallel, parallelize_module

from planner.errors import FlmplanError
from planner.optimizer import ADAM_BETAS, ADAM_EPS
from planner.specs import Layout
from runtime import mup
from runtime.freelm import accuracy
from runtime.model import Decoder, causal_lm_loss

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

TP_PLAN = {"attn.q": "col", "attn.k": "col", "attn.v": "col", "attn.o": "row", "mlp.up": "col", "mlp.gate": "col",
           "mlp.down": "row"}


def _physical_core(cpu: int) -> tuple[int, int, int]:
    """A logical CPU's (package, core, number): hyperthreads of one core sort side by side, so that a
    rank's share of the list is whole cores (Linux often numbers a core's second thread far from its
    first: 0 and 8 of 16)."""
    topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
    try:
        return int((topology / "physical_package_id").read_text()), int((topology / "core_id").read_text()), cpu
    except (OSError, ValueError):
        return 0, cpu, cpu


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a cpuset or taskset gives fewer than the
    machine has), or the machine's count where the platform has no affinity."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def rank_threads(local_ranks: int) -> int:
    """A CPU rank's intra-op threads: its whole share of the usable cores, at least one (ranks on
    one machine split its cores; more threads than cores only contend)."""
    return max(1, usable_cores() // max(1, local_ranks))


def pin_to_own_cores(local_rank: int, local_ranks: int) -> list[int] | None:
    """Keep a CPU rank's computing thread, and the intra-op threads it starts later (one per core of
    its share: fewer than the machine's in a cpuset), on its own share of the cores this process may
    use; the threads gloo started at init_process_group (call this after it) stay free to run
    wherever a core is idle. Left free, the ranks' computing threads migrate onto each other's cores:
    a tensor-parallel micro-batch of two 1-thread ranks took 132–144 ms free and 107–116 ms pinned,
    and no faster with gloo's threads pinned too (BENCHMARKS.md#cpu-pinning). The cores pinned, or None (one
    rank, or a platform without CPU affinity)."""
    if local_ranks <= 1 or not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0), key=_physical_core)
    per = rank_threads(local_ranks)
    start = local_rank * per % len(allowed)
    cores = allowed[start:start + per]
    os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))
    return cores


def make_mesh(layout: Layout, device_type: str) -> DeviceMesh:
    world = dist.get_world_size()
    if layout.gpus != world:
        raise FlmplanError(f"tp·pp·dp = {layout.tp}·{layout.pp}·{layout.dp} = {layout.gpus} ≠ {world} processes.")
    return init_device_mesh(device_type, (layout.pp, layout.dp, layout.tp), mesh_dim_names=("pp", "dp", "tp"))


@dataclass
class Precision:
    """What a run computes in. `compute` is the autocast dtype of the forward (None: fp32
    throughout); parameters, gradients and optimizer state stay fp32 (master weights). fp16 needs
    loss scaling: the loss is multiplied by `scale` before backward, a step whose gradients
    overflow is skipped and the scale halved, and it doubles after `growth_interval` good steps."""

    name: str = "fp32"
    scale: float = 1.0
    growth_interval: int = 1000
    good_steps: int = 0

    @property
    def compute(self) -> torch.dtype | None:
        return None if self.name == "fp32" else DTYPES[self.name]

    @property
    def loss_scaling(self) -> bool:
        return self.name == "fp16"

    @classmethod
    def of(cls, name: str) -> Precision:
        if name not in DTYPES:
            raise FlmplanError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}.")
        return cls(name=name, scale=2.0**16 if name == "fp16" else 1.0)

    def update(self, overflow: bool) -> None:
        """Dynamic loss scaling (Micikevicius et al. 2018): halve on overflow, grow when stable."""
        if not self.loss_scaling:
            return
        if overflow:
            self.scale, self.good_steps = self.scale / 2, 0
            return
        self.good_steps += 1
        if self.good_steps % self.growth_interval == 0:
            self.scale *= 2


def sdpa_backends(device: torch.device, layout: Layout, precision: Precision) -> list:
    """The attention kernels a step may use. On a GPU in bf16/fp16 the plan's flash attention
    must run as flash (an error, not a silent fallback to a slower kernel); "unfused" is the math
    path, which materialises the scores as the planner charges them."""
    from torch.nn.attention import SDPBackend

    if layout.attention == "unfused":
        return [SDPBackend.MATH]
    if device.type == "cuda" and precision.compute is not None:
        return [SDPBackend.FLASH_ATTENTION]
    return [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def make_optimizer(chunk: nn.Module, lr: float) -> torch.optim.Optimizer:
    """AdamW (β = 0.9, 0.95; weight decay on matrices only, not on LayerNorms, biases or the
    embedding, as GPT-3 and Megatron do); the fused kernel, on CPUs too (a third of foreach's time on
    this project's CPU, DTensors or not: BENCHMARKS.md#cpu-step-cost). One parameter
    group per learning-rate factor and decay (µP's, runtime/mup.py: each group's `lr_mult` scales
    the stage's rate) and per kind of tensor (plain, DTensors of each mesh): the multi-tensor
    kernels take one kind per call. Groups follow the shards: a chunk names its parameters as the
    whole model does."""
    cfg = chunk.cfg
    groups: dict[tuple, list[nn.Parameter]] = {}
    for name, p in chunk.named_parameters():
        kind = (tuple(p.device_mesh.mesh.flatten().tolist()), p.device_mesh.mesh_dim_names) \
            if isinstance(p, DTensor) else None
        groups.setdefault((mup.lr_mult(cfg, name, p), mup.weight_decay(cfg, name, p), kind), []).append(p)
    return torch.optim.AdamW([{"params": ps, "weight_decay": wd, "lr": lr * mult, "lr_mult": mult}
                              for (mult, wd, _), ps in groups.items()],
                             lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS, fused=True)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's rate for this step, times each group's µP factor."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)


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
        to set beside what planner/memory.py charges for the same layout."""

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
        batch of propositions (runtime/freelm.py) and leaves its accuracy in `teacher_accuracy`."""
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
            self.schedules[signal] = _pipeline_schedule(self, self.layout.pp, self.layout.interleave)
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
    output layer (runtime/model.py) yields logits split over the vocabulary."""
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
    chunks = split_for_pipeline(full, chunk_ids, p * v) if p > 1 else [full]
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
        pm.schedule = _pipeline_schedule(pm, p, v)
        if full.cfg.tied_embeddings:
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
