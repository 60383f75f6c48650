"""FreeLM's teacher signal (Li et al. 2023, arXiv 2305.01616), beside the language signal.

FreeLM casts downstream tasks into one format, a proposition the model judges true or false:

    <text> [sep] <proposition> [cls]

and reads the hidden state at [cls] with a small classification head (runtime/model/decoder.py's
`teacher`). A stage whose objective is "freelm" makes every `teacher_every`-th optimizer step a
teacher batch of such propositions; the other steps are language modelling, as before.

Where this departs from FreeLM, and why:
- [sep] and [cls] are the last two ids of the vocabulary; with the runtime's byte tokens they are
  0xFE and 0xFF, bytes that never occur in UTF-8 text, so no embedding row is added and a growth
  needs no special case. (FreeLM adds two tokens to GPT-2's vocabulary.)
- The head has no bias: its logits are then linear in the last LayerNorm's output, so µP's
  readout compensation at a growth keeps them exactly, as it keeps the language logits.
- Teacher and language batches alternate on a fixed schedule (FreeLM alternates too, by a
  mixing ratio), so a resumed run knows from the step alone which batch comes next.

A teacher file is JSON lines `{"text": …, "proposition": …, "label": true|false}` (and optionally
`"task"`); `teacher_data: "iq"` takes the IQ generators' train split instead (runtime/evaluation/iq_tasks.py: each
multiple-choice item with one of its choices, true when it is the answer). A seeded tenth is held
out and scored, per task, whenever the run checkpoints (`teacher_eval` in metrics.jsonl).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from planner.errors import FlmplanError
from runtime.data.corpus import Corpus

if TYPE_CHECKING:      # torch is imported where tensors are made: `flmplan simulate` checks teacher files without it
    import torch

IGNORE = -100          # the target of every position but [cls] (cross-entropy's ignore_index)
HELDOUT_FRACTION = 0.1
IQ_SOURCE = "iq"       # teacher_data naming the IQ generators' train split instead of a file


def teacher_source(path: str | Path | None) -> str | None:
    """What a plan records as teacher_data: "iq", or the file's absolute path (so that a run folder's copy
    of the plan resumes from anywhere)."""
    return None if path is None else IQ_SOURCE if str(path) == IQ_SOURCE else str(Path(path).resolve())
IQ_ITEMS_PER_TASK = 2000


def sep_id(vocab: int) -> int:
    return vocab - 2


def cls_id(vocab: int) -> int:
    return vocab - 1


def is_teacher_step(step: int, every: int) -> bool:
    """Every `every`-th step of a stage is a teacher batch (steps k−1, 2k−1, …)."""
    return every > 0 and step % every == every - 1


def teacher_steps_before(step: int, every: int) -> int:
    return step // every if every > 0 else 0


@dataclass(frozen=True)
class Proposition:
    text: str
    proposition: str
    label: bool
    task: str = ""        # optional: the held-out evaluation reports accuracy per task


def read_teacher_file(path: str | Path) -> list[Proposition]:
    """Every line a proposition; one plain sentence for the first thing wrong."""
    path = Path(path)
    if not path.is_file():
        raise FlmplanError(f"Teacher file {path} does not exist.")
    props = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError:
            raise FlmplanError(f"Teacher file {path}, line {n}, is not JSON.") from None
        if not isinstance(raw, dict):
            raise FlmplanError(f"Teacher file {path}, line {n}, is not an object with text, proposition and label.")
        for key, kind in (("text", str), ("proposition", str), ("label", bool)):
            if key not in raw:
                raise FlmplanError(f"Teacher file {path}, line {n}, has no \"{key}\".")
            if not isinstance(raw[key], kind):
                raise FlmplanError(f"Teacher file {path}, line {n}: \"{key}\" must be "
                                   f"{'true or false' if kind is bool else 'a string'}.")
        if not raw["proposition"]:
            raise FlmplanError(f"Teacher file {path}, line {n}, has an empty proposition.")
        if not isinstance(raw.get("task", ""), str):
            raise FlmplanError(f"Teacher file {path}, line {n}: \"task\" must be a string.")
        props.append(Proposition(raw["text"], raw["proposition"], raw["label"], raw.get("task", "")))
    if len(props) < 10:
        raise FlmplanError(f"Teacher file {path} has {len(props)} propositions; the teacher signal needs at least 10 "
                           "(a tenth is held out to score it).")
    return props


def iq_propositions(seed: int = 0) -> list[Proposition]:
    """The IQ generators' train split as propositions (runtime/evaluation/iq_tasks.py `propositions`)."""
    from runtime.evaluation.iq_tasks import propositions

    return [Proposition(**p) for p in propositions(IQ_ITEMS_PER_TASK, seed=seed)]


def split(props: list[Proposition], seed: int) -> tuple[list[Proposition], list[Proposition]]:
    """(training, held-out): a seeded HELDOUT_FRACTION is never trained on."""
    order = np.random.default_rng(seed).permutation(len(props))
    n_held = max(1, int(len(props) * HELDOUT_FRACTION))
    return [props[i] for i in order[n_held:]], [props[i] for i in order[:n_held]]


def encode(p: Proposition, seq: int, vocab: int) -> tuple[list[int], int]:
    """(seq token ids, index of [cls]): bytes of `text [sep] proposition [cls]`, the text cut from its
    start when the whole does not fit (the proposition is kept), zeros after [cls]."""
    prop = list(p.proposition.encode("utf-8"))[-(seq - 2):]
    room = seq - 2 - len(prop)
    text = list(p.text.encode("utf-8"))[-room:] if room > 0 else []
    ids = [*text, sep_id(vocab), *prop, cls_id(vocab)]
    return ids + [0] * (seq - len(ids)), len(ids) - 1


def batch(props: list[Proposition], seq: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of shape (n, seq): targets IGNORE but at [cls], where they hold the label (1 true)."""
    import torch

    xs, ys = [], []
    for p in props:
        ids, at = encode(p, seq, vocab)
        y = [IGNORE] * seq
        y[at] = int(p.label)
        xs.append(ids)
        ys.append(y)
    return torch.tensor(xs, dtype=torch.long), torch.tensor(ys, dtype=torch.long)


@dataclass
class TeacherSampler:
    """Teacher batches in a seeded order, epoch after epoch; the n-th batch is a function of n, so a
    resumed run needs no state of its own (n follows from the step)."""

    props: list[Proposition]
    seq: int
    vocab: int
    seed: int = 1234

    def batch(self, n: int, global_batch: int, dp_rank: int, dp_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This data-parallel rank's share of the n-th teacher batch."""
        per_rank = global_batch // dp_size
        start = n * global_batch + dp_rank * per_rank
        return batch([self.props[self._index(i)] for i in range(start, start + per_rank)], self.seq, self.vocab)

    def _index(self, i: int) -> int:
        epoch, k = divmod(i, len(self.props))
        if getattr(self, "_epoch", None) != epoch:
            self._epoch, self._perm = epoch, np.random.default_rng(self.seed + epoch).permutation(len(self.props))
        return int(self._perm[k])


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Share of [cls] positions whose larger logit is the label (a device tensor)."""
    at = targets != IGNORE
    return (logits[at].argmax(-1) == targets[at]).float().mean()


def synthetic_propositions(n: int, seed: int = 0) -> list[Proposition]:
    """A source of propositions for checks (tests, benchmarks): three kinds whose truth follows from
    the text alone, half of them true — whether a word is in a list (retrieval), which of two
    numbers is larger (comparison), whether the text is in capitals (a surface feature)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = sorted({"".join(rng.choice(letters, rng.integers(3, 7))) for _ in range(400)})
    out = []
    for i in range(n):
        label = bool(rng.integers(2))
        kind = i % 3
        if kind == 0:
            listed = list(rng.choice(words, 5, replace=False))
            asked = listed[rng.integers(5)] if label else next(w for w in rng.permutation(words) if w not in listed)
            out.append(Proposition("words: " + ", ".join(listed), f"{asked} is in the list", label, "retrieval"))
        elif kind == 1:
            a, b = rng.choice(100, 2, replace=False)
            bigger = a > b
            out.append(Proposition(f"a = {a}, b = {b}", "a is greater than b" if bigger == label
                                   else "b is greater than a", label, "comparison"))
        else:
            text = " ".join(rng.choice(words, 4))
            out.append(Proposition(text.upper() if label else text, "the text is in capitals", label, "capitals"))
    return out


def write_teacher_file(props: list[Proposition], path: str | Path) -> Path:
    path = Path(path)
    path.write_text("".join(json.dumps({"text": p.text, "proposition": p.proposition, "label": p.label,
                                        **({"task": p.task} if p.task else {})}) + "\n" for p in props))
    return path


def teacher_samplers(plan, seed: int, corpus: Corpus) -> dict[int, tuple[TeacherSampler, list]]:
    """Stage index → (sampler of its training propositions, its held-out ones), for FreeLM stages."""
    out, files = {}, {}
    for k, st in enumerate(plan.stages):
        if st.objective.kind != "freelm":
            continue
        path = st.objective.teacher_data
        if not path:
            raise FlmplanError(f"Stage {k + 1} ({st.name}) trains FreeLM's teacher signal but names no teacher_data; "
                               "give a JSON-lines file of propositions (flmplan run --teacher-data FILE).")
        if corpus.tokenizer["kind"] != "bytes":
            raise FlmplanError("The teacher signal encodes propositions as bytes; train FreeLM stages on byte-level "
                               "data (text files, or a corpus prepared without a tokenizer).")
        if path not in files:
            files[path] = split(iq_propositions() if path == IQ_SOURCE else read_teacher_file(path), seed)
        train, held = files[path]
        out[k] = (TeacherSampler(train, st.model.seq, st.model.vocab, seed=seed + 1000 * (k + 1)), held)
    return out
