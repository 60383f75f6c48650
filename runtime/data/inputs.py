"""What `flmplan data prepare` reads: the inputs found on disk and grouped by format, read with Hugging
Face `datasets` (text, JSON lines, parquet, or a dataset saved with `save_to_disk`) in batches bounded by
documents and by bytes, on a thread ahead of the tokenizer."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from planner.errors import FlmplanError

TEXT_SUFFIXES = {".txt", ".text", ".md"}
JSON_SUFFIXES = {".jsonl", ".json", ".ndjson"}
PARQUET_SUFFIXES = {".parquet"}


@dataclass
class Input:
    """One source as `datasets` reads it: a builder ("text", "json", "parquet") and its files, or a
    dataset folder saved with save_to_disk ("disk")."""

    kind: str
    files: list[Path]
    bytes: int

    @property
    def name(self) -> str:
        return str(self.files[0]) + (f" and {len(self.files) - 1} more" if len(self.files) > 1 else "")


def _kind_of(path: Path) -> str | None:
    suffixes = [s for s in path.suffixes if s not in (".gz", ".zst", ".bz2", ".xz")]
    last = suffixes[-1] if suffixes else ""
    return ("text" if last in TEXT_SUFFIXES else "json" if last in JSON_SUFFIXES
            else "parquet" if last in PARQUET_SUFFIXES else None)


def find_inputs(items: list[Path]) -> list[Input]:
    """The inputs, grouped by format; refuses a missing path, an empty file or folder, and a file
    whose format is not text, JSON lines or parquet."""
    out: dict[str, list[Path]] = {}
    disks = []
    for p in items:
        if not p.exists():
            raise FlmplanError(f"Input {p} does not exist.")
        if p.is_dir() and any((p / marker).is_file() for marker in ("dataset_info.json", "state.json",
                                                                    "dataset_dict.json")):
            disks.append(Input("disk", [p], sum(f.stat().st_size for f in p.rglob("*") if f.is_file())))
            continue
        files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")) if p.is_dir() else [p]
        if not files:
            raise FlmplanError(f"Input {p} is a folder with no files in it.")
        for f in files:
            kind = _kind_of(f)
            if kind is None:
                raise FlmplanError(f"Input {f} is neither text (.txt, .md), JSON lines (.jsonl, .json) nor parquet; "
                                   "rename it, or give a dataset folder saved with datasets' save_to_disk.")
            if f.stat().st_size == 0:
                raise FlmplanError(f"Input {f} is empty (0 bytes).")
            out.setdefault(kind, []).append(f)
    return [Input(k, fs, sum(f.stat().st_size for f in fs)) for k, fs in out.items()] + disks


def _stream(inp: Input, unit: str):
    """The input as an iterable of rows (dicts), streamed by `datasets`."""
    try:
        import datasets
    except ImportError:
        raise FlmplanError("flmplan data prepare reads inputs with Hugging Face datasets: "
                           "pip install -e '.[data]'.") from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    files = [str(f) for f in inp.files]
    if inp.kind == "disk":
        ds = datasets.load_from_disk(files[0])
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        return ds
    kwargs = {"sample_by": unit} if inp.kind == "text" else {}
    return datasets.load_dataset(inp.kind, data_files=files, split="train", streaming=True, **kwargs)


def _column(inp: Input, field: str) -> str:
    return "text" if inp.kind == "text" else field


def check_inputs(inputs: list[Input], field: str, unit: str) -> None:
    """Before anything is written: each input has a first document with the field, as a string, and
    text and JSON files start as UTF-8."""
    for inp in inputs:
        if inp.kind in ("text", "json"):
            for f in inp.files:
                if f.suffix in (".gz", ".zst", ".bz2", ".xz"):
                    continue
                with open(f, "rb") as fh:
                    head = fh.read(1 << 20)
                try:
                    head.decode("utf-8")
                except UnicodeDecodeError as err:
                    if err.start < len(head) - 4:      # not a character cut by the 1 MiB boundary
                        raise FlmplanError(f"Input {f} is not UTF-8 text (byte {err.start} is not).") from None
        col = _column(inp, field)
        try:
            first = next(iter(_stream(inp, unit)), None)
        except FlmplanError:
            raise
        except Exception as err:              # datasets' own parse errors name the file and the cause
            raise FlmplanError(f"Input {inp.name} cannot be read as {inp.kind}: {str(err).splitlines()[0]}") from None
        if first is None:
            raise FlmplanError(f"Input {inp.name} holds no documents.")
        if col not in first:
            raise FlmplanError(f"Input {inp.name} has no field {col!r} (its fields: {', '.join(map(str, first))}); "
                               "name the text field with --field.")
        if not isinstance(first[col], str):
            raise FlmplanError(f"Input {inp.name}'s field {col!r} holds {type(first[col]).__name__}, not text.")


# Documents read from an input at a time, and the most text one encode call gets.
READ_DOCS = 64
# Tokenizers hold about 100 bytes a character while they encode (their Encoding objects): 1 MiB of text
# a thread to a call (at least 2 MiB) keeps that near 100 MB a thread, and a call still spans many
# documents for each thread.
BATCH_CHARS_PER_THREAD = 1 << 20


def batch_chars() -> int:
    """The most text one encode call gets."""
    from runtime.data.indexed import tokenizer_threads

    return max(2, tokenizer_threads()) * BATCH_CHARS_PER_THREAD


def batches(inputs: list[Input], field: str, unit: str, size: int, skip: int = 0) -> Iterator[list[str]]:
    """Every document's text in lists of up to `size`, inputs in order (read by `datasets` a batch at
    a time: a row at a time costs more than tokenizing); the first `skip` documents are passed over (a
    resumed run)."""
    most = batch_chars()
    for inp in inputs:
        col = _column(inp, field)
        ds = _stream(inp, unit).select_columns([col])
        if skip:
            rows = len(ds) if inp.kind == "disk" else None
            if rows is not None and skip >= rows:
                skip -= rows
                continue
            ds, skip = ds.skip(skip), 0
        pending, chars = [], 0
        for batch in ds.iter(batch_size=min(size, READ_DOCS)):
            for t in batch[col]:
                t = t if t is not None else ""
                pending.append(t)
                chars += len(t)
                # A batch is `size` documents or `most` characters of text, whichever comes first (a document
                # longer than that goes alone): memory bounded by bytes, not by a count of documents.
                if len(pending) >= size or chars >= most:
                    yield pending
                    pending, chars = [], 0
        if pending:
            yield pending


# Batches read ahead of the tokenizer: reading (Arrow to Python text) holds the GIL, encoding releases it.
READ_AHEAD = 2


def read_ahead(items: Iterator[list[str]], depth: int = READ_AHEAD) -> Iterator[list[str]]:
    """`items` produced on a thread, up to `depth` ahead, so that reading overlaps the tokenizer instead of
    waiting for it (the tokenizer's threads release the GIL). The reader's errors are raised here; the
    thread ends when the consumer stops early."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(entry) -> bool:
        """Queue `entry`; False once the consumer has stopped."""
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as err:      # handed to the consumer, which raises it
            put((end, err))

    thread = threading.Thread(target=produce, name="prepare-reader", daemon=True)
    thread.start()
    try:
        while True:
            item, err = q.get()
            if err is not None:
                raise err
            if item is end:
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def documents(inputs: list[Input], field: str, unit: str, every: int = 1) -> Iterator[str]:
    """Every `every`-th document's text, inputs in order (a systematic sample over the whole corpus)."""
    k = 0
    for batch in batches(inputs, field, unit, 1024):
        for text in batch:
            if k % every == 0:
                yield text
            k += 1
