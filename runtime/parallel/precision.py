"""Precision (`Precision`): the parameters, gradients and Adam state are fp32 on every layout (the
master weights); the forward runs under autocast in bf16 (or fp16 with dynamic loss scaling), and
where FSDP shards, its MixedPrecisionPolicy gathers bf16 weights and reduces fp32 gradients. The
attention kernels a layout may use follow from the device and the dtype."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from planner.errors import FlmplanError
from planner.model.specs import Layout

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
