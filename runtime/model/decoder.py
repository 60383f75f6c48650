"""The FLM-style decoder in one readable file (nanoGPT's shape, FLM-101B's choices).

Pre-LayerNorm blocks, tanh-GeLU MLP (or SwiGLU), rotary position embedding with optional xPos
(Sun et al. 2022), grouped-query attention, tied input/output embeddings (or an output layer of
its own), and SP or µP (Yang et al. 2022; the rules are runtime/model/mup.py's).

Every place that Masked Structural Growth (Yao et al., ICLR 2024) needs a mask has one,
`None` unless a growth is ramping: the residual stream (`hidden_mask`), FFN neurons
(`ffn_mask`), attention heads (`head_mask`) and whole blocks (`depth_gate`). With the masks at
0 on new units the grown model computes exactly what the old one did.

Masks are tensors updated in place while they ramp, so a compiled block sees the same inputs
every step (no recompilation) and only two graphs exist: with masks and without.

The model knows nothing of parallelism (torchtitan's rule); `runtime/parallel/parallelize.py` applies it,
and the dtype policy (`compute_dtype`: autocast of the forward over fp32 master weights).
Blocks live in a ModuleDict keyed by their global index, so a pipeline stage can drop the
blocks it does not own and keep the checkpoint names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from planner.errors import FlmplanError
from planner.model.specs import ModelSpec
from runtime.model import mup


@dataclass(frozen=True)
class DecoderConfig(ModelSpec):
    """The planner's ModelSpec (the model's shape, defined once) and what only training needs."""

    fixed_head_dim: int | None = None   # default hidden // heads; MSG keeps it fixed when heads grow alone
    rope_theta: float = 10000.0
    xpos_scale_base: float = 512.0      # xPos's scale base (FLM-101B: 512), when model.position is "xpos"
    ln_eps: float = 1e-5
    init_std: float = 0.02
    # µP (runtime/model/mup.py): width_mult = hidden / mup_base_width scales init, learning rates and the readout.
    mup: bool = False
    mup_base_width: int = 256
    mup_output_mult: float = 1.0
    mup_attn_mult: float = 1.0
    # FreeLM's teacher signal (runtime/objectives/freelm.py): a true/false head read at [cls].
    teacher_head: bool = False

    @property
    def head_dim(self) -> int:
        return self.fixed_head_dim or self.hidden // self.heads

    def sets_head_dim(self) -> bool:
        return self.fixed_head_dim is not None


class MaskedLayerNorm(nn.Module):
    """LayerNorm whose statistics and output are weighted by a feature mask c (MSG §3.2):
    mean = Σc·x / Σc, var = Σc·(x − mean)² / Σc, y = c · LN(x). Plain LayerNorm when c is None."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        n = mask.sum()
        mean = (x * mask).sum(-1, keepdim=True) / n
        var = (((x - mean) ** 2) * mask).sum(-1, keepdim=True) / n
        y = (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias
        return y * mask


def rotary_tables(cfg: DecoderConfig, seq: int, device: torch.device,
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor | None, ...]:
    """cos, sin (seq, head_dim/2) and the xPos scales for q and k (Sun et al. 2022, eq. 9), each
    scale repeated over the pair it scales (seq, head_dim); None for plain rotary, which has none.
    Made in fp32 and cast once to `dtype`, the dtype q and k are computed in (as Megatron does)."""
    half = cfg.head_dim // 2
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, half, device=device, dtype=torch.float32) / half))
    pos = torch.arange(seq, device=device, dtype=torch.float32)
    angles = torch.outer(pos, inv_freq)
    cos, sin = angles.cos(), angles.sin()
    q_scale = k_scale = None
    if cfg.position == "xpos":
        zeta = (torch.arange(0, half, device=device, dtype=torch.float32) / half + 0.4) / 1.4
        power = (pos - seq // 2)[:, None] / cfg.xpos_scale_base
        q_scale, k_scale = ((zeta ** (sign * power)).repeat_interleave(2, dim=-1).to(dtype) for sign in (1, -1))
    return cos.to(dtype), sin.to(dtype), q_scale, k_scale


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """Rotate pairs (x1, x2) of each head by the position angle, then apply the xPos scale (if any):
    four products, two sums and the stack's copy (the slices are views), and one product for xPos
    (planner/model/anatomy.py counts these kernels). The tables are in x's dtype (rotary_tables), so q
    and k stay in the compute dtype that flash attention needs; `.to` is then no kernel."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    n = x.shape[-2]
    c, s = cos[:n].to(x.dtype), sin[:n].to(x.dtype)
    out = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)
    return out if scale is None else out * scale[:n].to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_heads, self.n_kv = cfg.heads, cfg.n_kv_heads
        self.head_dim = cfg.head_dim
        self.q = nn.Linear(cfg.hidden, cfg.heads * cfg.head_dim)
        self.k = nn.Linear(cfg.hidden, self.n_kv * cfg.head_dim)
        self.v = nn.Linear(cfg.hidden, self.n_kv * cfg.head_dim)
        self.o = nn.Linear(cfg.heads * cfg.head_dim, cfg.hidden)
        self.head_mask: torch.Tensor | None = None   # (heads,), MSG head growth

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, ...]) -> torch.Tensor:
        B, T, _ = x.shape
        d = self.head_dim
        # Local head counts: under tensor parallelism the projections hold a slice of the heads.
        q = self.q(x).view(B, T, -1, d).transpose(1, 2)        # (B, nh, T, hs)
        k = self.k(x).view(B, T, -1, d).transpose(1, 2)        # (B, nkv, T, hs)
        v = self.v(x).view(B, T, -1, d).transpose(1, 2)
        if self.head_mask is not None:
            q = q * self.head_mask.view(1, -1, 1, 1)
            kv_mask = self.head_mask.view(-1, q.shape[1] // k.shape[1])[:, 0].view(1, -1, 1, 1)
            k, v = k * kv_mask, v * kv_mask
        cos, sin, q_scale, k_scale = rope
        q, k = apply_rotary(q, cos, sin, q_scale), apply_rotary(k, cos, sin, k_scale)
        scale = mup.attention_scale(self.cfg)
        # The kernel (flash, or the unfused math path) is chosen around the step: parallel.sdpa_backends.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                           enable_gqa=k.shape[1] != q.shape[1])
        y = y.transpose(1, 2).reshape(B, T, -1)
        return self.o(y)


class MLP(nn.Module):
    """FLM's tanh-GeLU MLP, or SwiGLU (Shazeer 2020): down(SiLU(gate(x)) ⊙ up(x))."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.up = nn.Linear(cfg.hidden, cfg.ffn)
        self.gate = nn.Linear(cfg.hidden, cfg.ffn) if cfg.activation == "swiglu" else None
        self.down = nn.Linear(cfg.ffn, cfg.hidden)
        # (ffn,), MSG FFN growth: GeLU((xW+b) ⊙ c), or SiLU(gate(x)) ⊙ up(x) ⊙ c.
        self.ffn_mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.ffn_mask is not None:
            h = h * self.ffn_mask
        if self.gate is not None:
            return self.down(F.silu(self.gate(x)) * h)
        return self.down(F.gelu(h, approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.ln1 = MaskedLayerNorm(cfg.hidden, cfg.ln_eps)
        self.attn = Attention(cfg)
        self.ln2 = MaskedLayerNorm(cfg.hidden, cfg.ln_eps)
        self.mlp = MLP(cfg)
        self.depth_gate: torch.Tensor | None = None   # MSG depth growth: c·Block(h) + (1 − c)·h (0-d)
        self.recompute = "none"                        # "full" or "selective" (set from the layout)
        self.tp_mesh: DeviceMesh | None = None         # tensor parallelism: its mesh (set by apply_tp)
        self.sequence_parallel = False

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, ...],
                hidden_mask: torch.Tensor | None) -> torch.Tensor:
        if self.recompute == "full" and torch.is_grad_enabled():
            return checkpoint(self._forward, x, rope, hidden_mask, use_reentrant=False)
        if self.recompute == "selective" and torch.is_grad_enabled():
            return checkpoint(self._forward, x, rope, hidden_mask, use_reentrant=False,
                              context_fn=selective_recompute_context)
        return self._forward(x, rope, hidden_mask)

    def _forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, ...],
                 hidden_mask: torch.Tensor | None) -> torch.Tensor:
        # Under sequence parallelism x is this rank's slice of the sequence: LayerNorms and
        # residuals work on it, attention and the MLP on the gathered sequence, and their
        # row-parallel outputs come back reduce-scattered (Korthikanti et al. 2022, §4.2.2).
        m, sp = self.tp_mesh, self.sequence_parallel
        y = x + _masked(self.attn(column_parallel_input(self.ln1(x, hidden_mask), m, sp), rope), hidden_mask)
        y = y + _masked(self.mlp(column_parallel_input(self.ln2(y, hidden_mask), m, sp)), hidden_mask)
        if self.depth_gate is not None:
            y = self.depth_gate * y + (1.0 - self.depth_gate) * x
        return y


def _saved_ops() -> frozenset:
    """Selective recompute keeps what these ops computed (torchtitan's explicit op list): matrix
    products, attention kernels, reduce-scatters and all-reduces. Everything else — the
    element-wise work of LayerNorms, activation, masks and rotary — is recomputed in backward,
    Megatron-Core's selective recompute of LayerNorm and activation. A sequence-parallel
    all-gather is re-run too, as in torchtitan and Megatron-LM: keeping it would keep the whole
    sequence's LayerNorm output, where the planner (planner/model/anatomy.py) keeps none."""
    aten = torch.ops.aten
    ops = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default,
           aten._scaled_dot_product_flash_attention.default,
           aten._scaled_dot_product_efficient_attention.default,
           aten._scaled_dot_product_flash_attention_for_cpu.default}
    for name in ("_scaled_dot_product_cudnn_attention",):
        if hasattr(aten, name):
            ops.add(getattr(aten, name).default)
    fn = getattr(torch.ops, "_c10d_functional", None)
    if fn is not None:
        ops |= {fn.reduce_scatter_tensor.default, fn.all_reduce.default}
    return frozenset(ops)


SELECTIVE_RECOMPUTE_SAVES = _saved_ops()


def _keep_gemms_and_attention(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in SELECTIVE_RECOMPUTE_SAVES else CheckpointPolicy.PREFER_RECOMPUTE


def selective_recompute_context():
    return create_selective_checkpoint_contexts(_keep_gemms_and_attention)


def _masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x * mask


class _GatherSequence(torch.autograd.Function):
    """Forward: all-gather the sequence slices. Backward: keep this rank's slice of the gradient,
    which is already summed over the group by the column-parallel layers that consumed the
    gathered tensor (their input gradient is all-reduced)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        import torch.distributed as dist

        ctx.group = group
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _slice(grad, ctx.group).contiguous(), None


class _ScatterSequence(torch.autograd.Function):
    """Forward: this rank's slice of a sequence every rank holds whole. Backward: all-gather, so
    the producer (the embedding) gets the whole sequence's gradient on every rank."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return _slice(x, group).contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _GatherSequence.forward(ctx, grad, ctx.group), None


def _slice(x: torch.Tensor, group) -> torch.Tensor:
    import torch.distributed as dist

    return x.chunk(dist.get_world_size(group), dim=1)[dist.get_rank(group)]


def gather_sequence(x: torch.Tensor, group) -> torch.Tensor:
    """The whole sequence from its tensor-parallel slices (identity without sequence parallelism)."""
    return x if group is None else _GatherSequence.apply(x, group)


def column_parallel_input(x: torch.Tensor, mesh: DeviceMesh | None, sequence_parallel: bool) -> torch.Tensor:
    """The input of a block's column-parallel layers (q, k, v; up, gate) as one replicated DTensor,
    so that their partial input gradients are summed once per block half, in backward: an
    all-reduce (Megatron's f), or under sequence parallelism the reduce-scatter that is the
    conjugate of the all-gather (Korthikanti et al. 2022, §4.2.2). Each layer wrapping the plain
    tensor itself would all-reduce its own gradient, and a plain gather would be undone by an
    all-reduce and a slice: up to 2.5× the bytes."""
    if mesh is None:
        return x
    if sequence_parallel:
        return DTensor.from_local(x, mesh, [Shard(1)], run_check=False).redistribute(mesh, [Replicate()])
    return DTensor.from_local(x, mesh, [Replicate()], run_check=False)


def scatter_sequence(x: torch.Tensor, group) -> torch.Tensor:
    """This rank's slice of the sequence (identity without sequence parallelism)."""
    return x if group is None else _ScatterSequence.apply(x, group)


# The position encodings the runtime trains (planner/model/specs.py Position names them all).
POSITIONS = ("rotary", "xpos")


def check_trainable(model: ModelSpec, where: str) -> None:
    """Refuse, in one sentence, a model the runtime cannot train as planned."""
    if model.position not in POSITIONS:
        raise FlmplanError(f"{where} uses {model.position} positions (model.position), which the runtime does not "
                           "train (it trains rotary or xPos); plan it with one of those, or export it with "
                           "`flmplan export --to megatron`.")


class Decoder(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        check_trainable(cfg, "The model")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab, cfg.hidden)
        # The output layer: the embedding itself when tied (FLM-101B), else a matrix of its own.
        self.head = None if cfg.tied_embeddings else nn.Linear(cfg.hidden, cfg.vocab, bias=False)
        # FreeLM's classification head (no bias: runtime/objectives/freelm.py says why); `signal` picks the output.
        self.teacher = nn.Linear(cfg.hidden, 2, bias=False) if cfg.teacher_head else None
        self.signal = "language"
        self.blocks = nn.ModuleDict({str(i): Block(cfg) for i in range(cfg.layers)})
        self.ln_f = MaskedLayerNorm(cfg.hidden, cfg.ln_eps)
        self.hidden_mask: torch.Tensor | None = None  # (hidden,), MSG width growth
        self.takes_tokens = True                       # False on pipeline stages after the first
        self.sp_group = None                           # sequence parallelism: the tensor-parallel group
        self.compute_dtype: torch.dtype | None = None  # autocast dtype of the forward (None: the params')
        self.init_weights()

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """GPT-2 style init (output projections scaled by 1/√(2·layers)), µP's where asked."""
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.zeros_(p) if name.endswith("bias") else nn.init.ones_(p)
                continue
            with torch.no_grad():
                p.normal_(0.0, mup.init_std(self.cfg, name, p), generator=generator)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) → logits (B, T, vocab), or (B, T, 2) of the teacher head when `signal` is
        "teacher". A pipeline stage without the embedding takes the hidden states (B, T, hidden)
        instead, and one without ln_f returns hidden states."""
        if self.compute_dtype is None:
            return self._forward(tokens)
        with torch.autocast(tokens.device.type, dtype=self.compute_dtype):
            return self._forward(tokens)

    def _forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.takes_tokens:
            x = scatter_sequence(_masked(self.embed(tokens), self.hidden_mask), self.sp_group)
        else:
            x = tokens
        sp = 1 if self.sp_group is None else torch.distributed.get_world_size(self.sp_group)
        # In the dtype q and k come out of their projections in: autocast's, else the hidden states'.
        rope = rotary_tables(self.cfg, x.shape[1] * sp, x.device, self.compute_dtype or x.dtype)
        for block in self.blocks.values():
            x = block(x, rope, self.hidden_mask)
        if self.ln_f is None:
            return x
        x = gather_sequence(self.ln_f(x, self.hidden_mask), self.sp_group)
        if self.signal == "teacher":
            # True/false logits at every position (B, T, 2); the loss reads them at [cls]. The head is
            # replicated over tensor-parallel ranks, which all hold the whole gathered sequence.
            logits = self.teacher(x)
            return logits * mup.readout_mult(self.cfg) if self.cfg.mup else logits
        # Tied embeddings: a last pipeline stage keeps its own copy of `embed` for this.
        w = self.embed.weight if self.head is None else self.head.weight
        if isinstance(w, DTensor):
            # Vocabulary-parallel output layer: replicated input, logits split over the vocabulary
            # (the input's gradient is all-reduced over the group in backward).
            x = DTensor.from_local(x, w.device_mesh, [Replicate()], run_check=False)
        logits = F.linear(x, w)
        if self.cfg.mup:
            logits = logits * mup.readout_mult(self.cfg)
        return logits


def causal_lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
