"""Training data: real text, byte-level tokens, a deterministic and resumable sampler.

`--data` takes text files (or folders of them) or a pre-tokenized binary (`.bin`, uint16
tokens, as nanoGPT writes them). With no `--data`, the text is the Python standard library's
own sources, which every machine with Python has. Bytes are tokens (vocabulary 256), so
nothing is downloaded.

The sampler cuts the token stream into sequences of seq + 1 and visits them in a seeded
permutation, epoch after epoch; its position (sequences consumed) is all a checkpoint needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

BYTE_VOCAB = 256


def stdlib_text_files(limit_bytes: int = 8 << 20) -> list[Path]:
    """The standard library's .py files, in a fixed order, up to about limit_bytes."""
    root = Path(os.__file__).parent
    files, total = [], 0
    for path in sorted(root.glob("*.py")):
        files.append(path)
        total += path.stat().st_size
        if total >= limit_bytes:
            break
    return files


def load_tokens(paths: list[str | Path] | None) -> tuple[np.ndarray, str]:
    """(tokens, description). Text → bytes; .bin → uint16 tokens."""
    if not paths:
        files = stdlib_text_files()
        what = f"Python {os.sys.version.split()[0]} standard library ({len(files)} files)"
    else:
        files = []
        for p in map(Path, paths):
            if not p.exists():
                raise FileNotFoundError(f"--data {p} does not exist")
            files += sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        what = ", ".join(str(p) for p in paths)
    if len(files) == 1 and files[0].suffix == ".bin":
        return np.fromfile(files[0], dtype=np.uint16).astype(np.int64), what
    data = b"".join(f.read_bytes() for f in files)
    return np.frombuffer(data, dtype=np.uint8).astype(np.int64), what


@dataclass
class Sampler:
    """Deterministic sequence order; `position` counts sequences handed out so far."""

    tokens: np.ndarray
    seq: int
    seed: int = 1234
    position: int = 0

    def __post_init__(self) -> None:
        self.n = (len(self.tokens) - 1) // self.seq
        if self.n < 1:
            raise ValueError(f"the data has {len(self.tokens)} tokens, fewer than one sequence of {self.seq}")

    def _index(self, i: int) -> int:
        epoch, k = divmod(i, self.n)
        if getattr(self, "_epoch", None) != epoch:          # one permutation per epoch, not per sequence
            self._epoch, self._perm = epoch, np.random.default_rng(self.seed + epoch).permutation(self.n)
        return int(self._perm[k])

    def batch(self, global_batch: int, dp_rank: int, dp_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This data-parallel rank's share of the next global batch: (inputs, targets)."""
        per_rank = global_batch // dp_size
        start = self.position + dp_rank * per_rank
        rows = [self.tokens[self._index(i) * self.seq:self._index(i) * self.seq + self.seq + 1]
                for i in range(start, start + per_rank)]
        self.position += global_batch
        x = torch.from_numpy(np.stack(rows))
        return x[:, :-1].contiguous(), x[:, 1:].contiguous()
