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

from planner.errors import FlmplanError

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
    """(tokens, description). Text → bytes; .bin → uint16 tokens. Refuses, in one sentence, a
    path that does not exist, a folder with no files, no data, and text that is not UTF-8 text."""
    if not paths:
        files = stdlib_text_files()
        what = f"Python {os.sys.version.split()[0]} standard library ({len(files)} files)"
    else:
        files = []
        for p in map(Path, paths):
            if not p.exists():
                raise FlmplanError(f"--data {p} does not exist.")
            found = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
            if not found:
                raise FlmplanError(f"--data {p} is a folder with no files in it.")
            files += found
        what = ", ".join(str(p) for p in paths)
    if len(files) == 1 and files[0].suffix == ".bin":
        tokens = np.fromfile(files[0], dtype=np.uint16).astype(np.int64)
        if tokens.size == 0:
            raise FlmplanError(f"--data {files[0]} holds no tokens.")
        return tokens, what
    if any(f.suffix == ".bin" for f in files):
        raise FlmplanError("--data takes one .bin file of tokens, or text files, not both or several .bin files.")
    data = b"".join(f.read_bytes() for f in files)
    if not data:
        raise FlmplanError(f"--data {what} holds no text (0 bytes).")
    try:
        data[:1 << 20].decode("utf-8")
    except UnicodeDecodeError as err:
        raise FlmplanError(f"--data {what} is not UTF-8 text (byte {err.start} of the first MiB is not); "
                           "give text files, or a .bin of uint16 token ids.") from None
    return np.frombuffer(data, dtype=np.uint8).astype(np.int64), what


def check_tokens(tokens: np.ndarray, vocab: int, seq: int, what: str) -> None:
    """Refuse data a plan cannot train on: token ids outside its vocabulary, or less than one
    sequence (checked before any process starts, not as an IndexError in the embedding)."""
    top = int(tokens.max())
    if top >= vocab:
        raise FlmplanError(f"--data {what} has token id {top}, outside the plan's vocabulary of {vocab}.")
    if len(tokens) < seq + 1:
        raise FlmplanError(f"--data {what} has {len(tokens)} tokens, fewer than one sequence of {seq} + 1.")


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
            raise FlmplanError(f"The data has {len(self.tokens)} tokens, fewer than one sequence of {self.seq}.")

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
