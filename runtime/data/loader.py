"""What a rank reads of a corpus, step by step: the sequences of its share of each global batch, in a
keyed Feistel permutation of the corpus (docs/decisions.md#data-order-feistel) blended across sources
as Megatron-LM's BlendedDataset blends them (docs/decisions.md#data-blend-megatron), read ahead of
the step that needs them. Resuming needs only the position and the samples drawn per source."""

from __future__ import annotations

import functools
import hashlib
import zlib
from dataclasses import dataclass

import numpy as np

from planner.errors import FlmplanError
from runtime.data.corpus import Corpus

# splitmix64's multipliers and the 64-bit mask of the Feistel network's round function.
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_MASK64 = (1 << 64) - 1


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a 64-bit avalanche, the Feistel network's round function."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(_M1)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(_M2)
    return x ^ (x >> np.uint64(31))


def _mix_int(x: int) -> int:
    """_mix on one Python int (the same bits): a batch's few rows are cheaper without numpy's calls."""
    x = ((x ^ (x >> 30)) * _M1) & _MASK64
    x = ((x ^ (x >> 27)) * _M2) & _MASK64
    return x ^ (x >> 31)


@functools.lru_cache(maxsize=4096)
def _key(*parts: int) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")


def permute(i: np.ndarray, n: int, key: int, rounds: int = 4) -> np.ndarray:
    """A keyed bijection of [0, n): a Feistel network on the fewest bits that hold n (unbalanced when
    they are odd, the halves swapping widths each round), walking the cycle until the value falls
    below n (Black & Rogaway 2002, cycle-walking); the domain is under 2n, so a walk is short."""
    bits = max(2, (n - 1).bit_length())
    widths = (bits // 2, bits - bits // 2)
    keys = [_key(key, r) for r in range(rounds)]
    i = np.asarray(i)
    if i.size <= 256:
        out = []
        for x in i.tolist():
            while True:
                a, b = widths
                left, right = x >> b, x & ((1 << b) - 1)
                for k in keys:
                    # (L: a bits, R: b bits) → (R: b bits, L ^ F(R): a bits); the widths swap.
                    left, right = right, left ^ (_mix_int(right ^ k) & ((1 << a) - 1))
                    a, b = b, a
                x = (left << b) | right
                if x < n:
                    break
            out.append(x)
        return np.array(out, dtype=np.int64).reshape(i.shape)
    x = i.astype(np.uint64)
    todo = np.ones(x.shape, dtype=bool)
    ukeys = [np.uint64(k) for k in keys]
    with np.errstate(over="ignore"):
        while todo.any():
            a, b = widths
            y = x[todo]
            left, right = y >> np.uint64(b), y & np.uint64((1 << b) - 1)
            for k in ukeys:
                left, right = right, left ^ (_mix(right ^ k) & np.uint64((1 << a) - 1))
                a, b = b, a
            x[todo] = (left << np.uint64(b)) | right
            todo = x >= np.uint64(n)
    return x.astype(np.int64)


BLEND_BLOCK = 64        # samples per block of the blend; a block's candidates are found once
SMALL_BLEND = 24        # candidates up to which plain Python floats beat numpy's per-call cost


def blend(weights: np.ndarray, counts: np.ndarray, position: int, count: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Megatron-LM's blend (helpers.cpp, build_blending_indices) for samples position … position + count − 1:
    sample i goes to the source whose count lags weight × max(i, 1) most, the first such on a tie, the
    error computed as Megatron computes it (float64, w·i − count). Returns the source of each sample, its
    sample number in that source, and the counts after them.

    Exact, and fast for thousands of sources: within a block of T samples at most T sources are picked, so
    the largest error never falls below the (T+1)-th largest at the block's start (an unpicked source's
    error only grows); a source whose error cannot reach that even unpicked to the block's end is never
    the argmax there. Each sample's argmax runs over the rest only."""
    w = np.asarray(weights, dtype=np.float64)
    c = np.asarray(counts, dtype=np.float64).copy()
    out = np.empty(count, dtype=np.int64)
    for start in range(0, count, BLEND_BLOCK):
        n = min(BLEND_BLOCK, count - start)
        first, last = float(max(position + start, 1)), float(max(position + start + n - 1, 1))
        now = w * first - c
        floor = np.partition(now, len(now) - n - 1)[len(now) - n - 1] if len(now) > n else -np.inf
        # 1e-9: the rounding of w·i − c at these magnitudes is far below it.
        cand = np.flatnonzero(w * last - c >= floor - 1e-9)
        ks = [float(max(position + start + k, 1)) for k in range(n)]
        if len(cand) <= SMALL_BLEND:
            wl, cl, ids = w[cand].tolist(), c[cand].tolist(), cand.tolist()
            for k, i in enumerate(ks):
                best, m = -np.inf, 0
                for q, wq in enumerate(wl):
                    e = wq * i - cl[q]
                    if e > best:
                        best, m = e, q
                out[start + k] = ids[m]
                cl[m] += 1.0
            c[cand] = cl
            continue
        wc, cc = w[cand], c[cand]
        err = np.empty(len(cand))
        for k, i in enumerate(ks):
            m = int(np.subtract(np.multiply(wc, i, out=err), cc, out=err).argmax())
            out[start + k] = cand[m]
            cc[m] += 1
        c[cand] = cc
    # Each source's sample numbers: its count before the batch, then one more at each of its picks.
    order = np.argsort(out, kind="stable")
    firsts = np.searchsorted(out[order], out[order])
    idx = np.empty(count, dtype=np.int64)
    idx[order] = np.asarray(counts, dtype=np.int64)[out[order]] + np.arange(count) - firsts
    return out, idx, c.astype(np.int64)


@dataclass
class Batch:
    """One rank's share of a global batch, and the sampler's state once it is taken."""

    x: object
    y: object
    position: int
    counts: list[int]
    digest: int
    shape: tuple[int, int, int]      # (global batch, dp rank, dp size) it was drawn for


class Sampler:
    """Deterministic, resumable sequences from a Corpus. `position` counts sequences handed out so
    far (all data-parallel ranks together) and `counts` how many of them each source gave."""

    def __init__(self, corpus: Corpus, seq: int, seed: int = 1234, position: int = 0,
                 counts: list[int] | None = None, holdout: float = 0.0) -> None:
        self.corpus, self.seq, self.seed, self.position = corpus, seq, seed, position
        self.n = corpus.samples(seq, holdout)
        if min(self.n) < 1:
            raise FlmplanError(f"The data has fewer tokens than one sequence of {seq} + 1.")
        self.weights = np.array([s.weight for s in corpus.sources])
        if counts is None:
            if len(self.n) > 1 and position:
                raise FlmplanError("A blended corpus resumes from the samples drawn per source; this checkpoint has "
                                   "only a position.")
            counts = [position] if len(self.n) == 1 else [0] * len(self.n)
        self.counts = list(counts)
        self.digest = 0

    def state(self) -> dict:
        return {"data_position": self.position, "data_counts": list(self.counts)}

    def _assign(self, count: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """The next `count` samples as (source, that source's sample number), and the counts after
        them; the sampler itself is not changed."""
        src = np.zeros(count, dtype=np.int64)
        idx = np.empty(count, dtype=np.int64)
        counts = list(self.counts)
        if len(self.n) == 1:
            idx[:] = counts[0] + np.arange(count)
            counts[0] += count
        else:
            src, idx, after = blend(self.weights, np.array(counts), self.position, count)
            counts = after.tolist()
        return src, idx, counts

    def _rows(self, src: np.ndarray, idx: np.ndarray) -> np.ndarray:
        if len(self.n) == 1 and len(idx) and idx[0] // self.n[0] == idx[-1] // self.n[0]:   # one source, one epoch
            start = permute(idx % self.n[0], self.n[0], _key(self.seed, 0, int(idx[0] // self.n[0]))) * self.seq
            return self.corpus.sources[0].data.read_rows(start, self.seq + 1).astype(np.int64)
        out = np.empty((len(src), self.seq + 1), dtype=np.int64)
        for d in np.unique(src):
            at = np.nonzero(src == d)[0]
            epoch, k = np.divmod(idx[at], self.n[d])
            start = np.empty(len(at), dtype=np.int64)
            for e in np.unique(epoch):
                sel = epoch == e
                start[sel] = permute(k[sel], self.n[d], _key(self.seed, int(d), int(e))) * self.seq
            out[at] = self.corpus.sources[d].data.read_rows(start, self.seq + 1)
        return out

    def peek(self, global_batch: int, dp_rank: int, dp_size: int) -> Batch:
        """This data-parallel rank's share of the next global batch, without taking it: only its own
        rows are read. A pure function of the sampler's state, so it may run on another thread while
        a step computes (runtime/train.py reads the next batch ahead)."""
        import torch

        per_rank = global_batch // dp_size
        src, idx, counts = self._assign(global_batch)
        mine = slice(dp_rank * per_rank, (dp_rank + 1) * per_rank)
        x = torch.from_numpy(self._rows(src[mine], idx[mine]))
        return Batch(x[:, :-1].contiguous(), x[:, 1:].contiguous(), self.position + global_batch, counts,
                     zlib.crc32(np.stack([src, idx]).tobytes()), (global_batch, dp_rank, dp_size))

    def take(self, batch: Batch) -> tuple:
        """Move past a batch from `peek`: (inputs, targets)."""
        self.position, self.counts, self.digest = batch.position, list(batch.counts), batch.digest
        return batch.x, batch.y

    def batch(self, global_batch: int, dp_rank: int, dp_size: int):
        """This data-parallel rank's share of the next global batch: (inputs, targets). `digest` is
        then a checksum of the whole global batch's sample numbers."""
        return self.take(self.peek(global_batch, dp_rank, dp_size))

    def shares(self) -> dict[str, float]:
        """The realised share of each source so far."""
        total = max(1, sum(self.counts))
        return {s.name: c / total for s, c in zip(self.corpus.sources, self.counts, strict=True)}


class ReadAhead:
    """The next language batch is read on a thread while the step computes: what a step still waits
    for is what `metrics.jsonl` logs as `data_s`. The sampler's state is only moved by `next`, so a
    checkpoint between steps records the batches taken, not the one read ahead."""

    def __init__(self, sampler: Sampler) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.sampler = sampler
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="flmplan-data")
        self.pending = None

    def next(self, global_batch: int, dp_rank: int, dp_size: int):
        shape = (global_batch, dp_rank, dp_size)
        start = self.sampler.position
        batch = self.pending.result() if self.pending is not None else None
        if batch is None or batch.shape != shape or batch.position != start + global_batch:
            batch = self.sampler.peek(*shape)        # the layout changed (a new stage): read it now
        x, y = self.sampler.take(batch)
        self.pending = self.pool.submit(self.sampler.peek, *shape)
        return x, y

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
