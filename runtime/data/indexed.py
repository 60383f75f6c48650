"""A prepared corpus on disk: Megatron-LM's indexed dataset, its manifest and its tokenizer.

`PREFIX.bin` holds the token ids of every document, each ended by the end-of-document token, one
after another; `PREFIX.idx` is Megatron-LM's `MMIDIDX` index of them (megatron/core/datasets/
indexed_dataset.py: a 9-byte magic, version 1, the dtype's code, the sequence and document counts,
then int32 sequence lengths, int64 byte pointers, int64 document indices). One sequence is one
document here, as Megatron's preprocess_data.py writes without --split-sentences. The ids are uint16
when the vocabulary fits in 16 bits, int32 otherwise. `PREFIX.manifest.json` says what made it
(tokenizer, its hash, vocabulary, documents, tokens, sources) and `PREFIX.tokenizer.json` is a copy
of the tokenizer, so a prepared corpus is self-contained.

This module needs numpy only (and Hugging Face `tokenizers` for a tokenizer that is not bytes), so the
front end checks a corpus against a plan before torch is imported.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from planner.errors import FlmplanError

MAGIC = b"MMIDIDX\x00\x00"
# Megatron-LM's DType enum (indexed_dataset.py): the code stored in the index header.
DTYPE_CODES = {np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.int16): 3, np.dtype(np.int32): 4,
               np.dtype(np.int64): 5, np.dtype(np.float64): 6, np.dtype(np.float32): 7, np.dtype(np.uint16): 8}
HEADER_BYTES = len(MAGIC) + 8 + 1 + 8 + 8
MANIFEST_SCHEMA = "flmplan-corpus"
BYTE_VOCAB = 256
BYTE_EOD = 0          # NUL never occurs in text; it ends a document and, in the IQ harness, starts one
EOD_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>", "[EOS]")


def token_dtype(vocab: int) -> np.dtype:
    """uint16 for a vocabulary under 65,500 entries, else int32: megatron-core's own rule
    (`DType.optimal_dtype`), so a corpus is written with the bytes Megatron-LM writes for it."""
    return np.dtype(np.uint16) if vocab < 65500 else np.dtype(np.int32)


def paths(prefix: str | Path) -> dict[str, Path]:
    p = str(prefix)
    return {"bin": Path(p + ".bin"), "idx": Path(p + ".idx"), "manifest": Path(p + ".manifest.json"),
            "tokenizer": Path(p + ".tokenizer.json")}


def prefix_of(path: str | Path) -> Path | None:
    """The prefix a --data path names (PREFIX, PREFIX.bin or PREFIX.idx), if an indexed dataset is there."""
    p = Path(path)
    if p.suffix in (".bin", ".idx"):
        p = p.with_suffix("")
    if paths(p)["bin"].is_file() or paths(p)["idx"].is_file():
        return p
    return None


# --- tokenizers ------------------------------------------------------------------------------------
class Codec:
    """Text ↔ token ids, with the end-of-document id and the vocabulary a model needs for them."""

    kind: str
    vocab: int
    eod: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def describe(self) -> dict:
        raise NotImplementedError


class ByteCodec(Codec):
    """UTF-8 bytes as tokens: the zero-setup default (nothing to download or train)."""

    kind, vocab, eod = "bytes", BYTE_VOCAB, BYTE_EOD

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def describe(self) -> dict:
        return {"kind": "bytes", "vocab": BYTE_VOCAB, "eod": BYTE_EOD, "eod_token": "\\x00", "sha256": "bytes"}


# A document longer than this (in characters) is encoded in pieces of about this size, one a thread to a
# call (at least two); a piece's end is looked for in the last CUT_SEARCH characters of its window.
LONG_TEXT_CHARS = 1 << 18
CUT_SEARCH = 1 << 13
# cl100k's pre-tokenization regex (GPT-4's; Llama 3's tokenizer.json splits with it).
CL100K_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


# Where a cut may fall, found forward when a window holds none: a lone space or newline.
_CUT_AT = re.compile(r"(?<=\S)[ \n](?=\S)")


def tokenizer_threads() -> int:
    """The threads Hugging Face tokenizers encode with: RAYON_RS_NUM_CPUS (`data prepare --workers`), else
    every core."""
    return int(os.environ.get("RAYON_RS_NUM_CPUS") or os.cpu_count() or 1)


def _cut_at(text: str, j: int) -> int | None:
    """Where a piece ends for a single space or newline at j between two other characters (HFCodec.pieces'
    rule): before the space, after the newline; None elsewhere."""
    if text[j - 1].isspace() or text[j + 1].isspace():
        return None
    return j if text[j] == " " else j + 1


def _cut(text: str, start: int, end: int) -> int | None:
    """The last place in text[start:end] where a piece may end (HFCodec.pieces' rules), looked for in
    the window's last CUT_SEARCH characters; else the first after it (a longer piece); else None."""
    for j in range(end - 2, max(start, end - CUT_SEARCH), -1):
        if text[j] in " \n" and (at := _cut_at(text, j)) is not None:
            return at
    for m in _CUT_AT.finditer(text, end - 1):
        if m.start() > start and (at := _cut_at(text, m.start())) is not None:
            return at
    return None


class HFCodec(Codec):
    """A Hugging Face `tokenizers` tokenizer (tokenizer.json), its end-of-document token found by name."""

    kind = "hf"

    def __init__(self, path: str | Path, eod_token: str | None = None) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise FlmplanError("Tokenizers other than bytes need Hugging Face tokenizers: "
                               "pip install -e '.[data]'.") from None
        p = Path(path)
        file = p / "tokenizer.json" if p.is_dir() else p
        if not file.is_file():
            raise FlmplanError(f"Tokenizer {path} is neither a tokenizer.json nor a folder with one.")
        try:
            self.tok = Tokenizer.from_file(str(file))
        except Exception as err:          # tokenizers raises its own Exception type for a bad file
            raise FlmplanError(f"Tokenizer {file} cannot be read by Hugging Face tokenizers ({err}).") from None
        self.file = file
        self.vocab = self.tok.get_vocab_size(with_added_tokens=True)
        names = [eod_token] if eod_token else list(EOD_CANDIDATES)
        found = [(n, self.tok.token_to_id(n)) for n in names if self.tok.token_to_id(n) is not None]
        if not found:
            raise FlmplanError(f"Tokenizer {file} has no end-of-document token "
                               f"({'named ' + eod_token if eod_token else 'none of ' + ', '.join(EOD_CANDIDATES)}); "
                               "name one with --eod-token.")
        self.eod_token, self.eod = found[0]

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.file.read_bytes()).hexdigest()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list:
        """Each text's ids (a list; a long text's, an int32 array). A text longer than LONG_TEXT_CHARS is
        encoded in pieces cut at pre-token boundaries, the same ids as whole (encoding holds about 100
        bytes a character), a piece a thread to a call so the thread pool shares them."""
        # encode_batch_fast: the same ids as encode_batch without computing character offsets.
        encode = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)
        long = {k for k, t in enumerate(texts) if len(t) > LONG_TEXT_CHARS} if self.cuts_locally else set()
        ids: list = [e.ids for e in encode([t if k not in long else "" for k, t in enumerate(texts)],
                                           add_special_tokens=False)]
        per_call = max(2, tokenizer_threads())
        for k in long:
            parts, group = [], []
            for piece in itertools.chain(self.pieces(texts[k]), [None]):
                if piece is not None:
                    group.append(piece)
                if group and (piece is None or len(group) == per_call):
                    parts += [np.asarray(e.ids, dtype=np.int32) for e in encode(group, add_special_tokens=False)]
                    group = []
            ids[k] = np.concatenate(parts)
        return ids

    @cached_property
    def cuts_locally(self) -> bool:
        """Whether `pieces` may cut a text: no normalizer, a BPE model (its merges never cross
        pre-tokens), and a pre-tokenization `pieces`' two rules hold for: GPT-2's (ByteLevel with its
        regex, no prefix space) or cl100k's regex (Llama 3's, GPT-4's) split before a plain ByteLevel."""
        spec = json.loads(self.tok.to_str())
        pre = spec.get("pre_tokenizer") or {}
        if spec.get("normalizer") is not None or (spec.get("model") or {}).get("type") != "BPE":
            return False
        if pre.get("type") == "ByteLevel":
            return not pre.get("add_prefix_space") and pre.get("use_regex", True)
        parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
        return (len(parts) == 2 and parts[0].get("type") == "Split" and not parts[0].get("invert")
                and (parts[0].get("pattern") or {}).get("Regex") == CL100K_SPLIT
                and parts[0].get("behavior") == "Isolated" and parts[1].get("type") == "ByteLevel"
                and not parts[1].get("add_prefix_space") and not parts[1].get("use_regex", True))

    def pieces(self, text: str) -> Iterator[str]:
        r"""`text` in pieces of up to LONG_TEXT_CHARS, each ending where both pre-tokenizations of
        `cuts_locally` end a pre-token whatever came before, and a piece alone pre-tokenizes as it did: at
        a lone space or newline between two other characters, before the space ("a b": "a" | " b", the
        space leading the next pre-token, or alone before a digit in cl100k), after the newline ("a\nb",
        "):\nb": the newline alone, or ending a punctuation run). Never after a whitespace run: GPT-2's
        `\s+(?!\S)` would see the piece's end and take the run whole. Where a window holds no such place
        the piece runs on to the next one; the text is whole where it holds an added token's text."""
        if any(t.content in text for t in self.tok.get_added_tokens_decoder().values()):
            yield text
            return
        start = 0
        while len(text) - start > LONG_TEXT_CHARS:
            end = _cut(text, start, start + LONG_TEXT_CHARS)
            if end is None:
                break
            yield text[start:end]
            start = end
        yield text[start:]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    def describe(self) -> dict:
        return {"kind": "hf", "vocab": self.vocab, "eod": self.eod, "eod_token": self.eod_token,
                "sha256": self.sha256}


def codec_for(prefix: str | Path) -> Codec:
    """The tokenizer a prepared corpus was made with (its copy beside the corpus)."""
    man = read_manifest(prefix)
    tok = man["tokenizer"]
    if tok["kind"] == "bytes":
        return ByteCodec()
    return HFCodec(paths(prefix)["tokenizer"], tok.get("eod_token"))


# --- writing ---------------------------------------------------------------------------------------
class IndexedWriter:
    """Streams documents into PREFIX.bin.partial, and their lengths into PREFIX.lengths.partial, then
    writes the index and renames both into place at `finish` (nothing under the final names until the
    corpus is whole). `resume` continues partial files from a recorded (documents, bytes) point."""

    def __init__(self, prefix: str | Path, dtype: np.dtype, resume_at: tuple[int, int] | None = None) -> None:
        self.prefix, self.dtype = Path(prefix), np.dtype(dtype)
        f = paths(prefix)
        self.bin_tmp, self.len_tmp = Path(f"{f['bin']}.partial"), Path(f"{prefix}.lengths.partial")
        self.documents, self.tokens = 0, 0
        mode = "wb"
        if resume_at is not None:
            docs, nbytes = resume_at
            # Cut what was written after the recorded point (a kill between a write and its record).
            os.truncate(self.bin_tmp, nbytes)
            os.truncate(self.len_tmp, docs * 4)
            self.documents, self.tokens, mode = docs, nbytes // self.dtype.itemsize, "ab"
        self.bin = open(self.bin_tmp, mode)   # noqa: SIM115
        self.lengths = open(self.len_tmp, mode)   # noqa: SIM115

    def add(self, ids: np.ndarray, lengths: np.ndarray) -> None:
        """Documents given as their ids one after another (each ended by the end-of-document id)."""
        self.bin.write(np.ascontiguousarray(ids, dtype=self.dtype).tobytes())
        self.lengths.write(np.ascontiguousarray(lengths, dtype=np.int32).tobytes())
        self.documents += len(lengths)
        self.tokens += len(ids)

    def sync(self) -> tuple[int, int]:
        """Flush to disk; the point a resumed run continues from: (documents, .bin bytes)."""
        for f in (self.bin, self.lengths):
            f.flush()
            os.fsync(f.fileno())
        return self.documents, self.tokens * self.dtype.itemsize

    def finish(self) -> None:
        self.sync()
        self.bin.close()
        self.lengths.close()
        f = paths(self.prefix)
        idx_tmp = Path(f"{f['idx']}.partial")
        n = self.documents
        with open(idx_tmp, "wb") as out, open(self.len_tmp, "rb") as lengths:
            out.write(MAGIC + struct.pack("<Q", 1) + struct.pack("<B", DTYPE_CODES[self.dtype]))
            out.write(struct.pack("<Q", n) + struct.pack("<Q", n + 1))
            out.write(lengths.read())            # int32 lengths (4 bytes a document)
            # int64 byte pointers, then document indices 0..n, a chunk at a time (memory flat in n).
            start, chunk = 0, 1 << 22
            lens = np.memmap(self.len_tmp, dtype=np.int32, mode="r") if n else np.zeros(0, np.int32)
            for i in range(0, n, chunk):
                part = lens[i:i + chunk].astype(np.int64) * self.dtype.itemsize
                ptr = np.cumsum(part) - part + start
                start = int(ptr[-1] + part[-1])
                out.write(ptr.tobytes())
            for i in range(0, n + 1, chunk):
                out.write(np.arange(i, min(n + 1, i + chunk), dtype=np.int64).tobytes())
            del lens
            out.flush()
            os.fsync(out.fileno())
        os.replace(self.bin_tmp, f["bin"])
        os.replace(idx_tmp, f["idx"])
        self.len_tmp.unlink()

    def abandon(self) -> None:
        """Remove the partial files (bad input found mid-way: nothing is left half-written)."""
        for f in (self.bin, self.lengths):
            f.close()
        self.bin_tmp.unlink(missing_ok=True)
        self.len_tmp.unlink(missing_ok=True)


def write_manifest(prefix: str | Path, record: dict) -> None:
    f = paths(prefix)["manifest"]
    tmp = Path(f"{f}.partial")
    tmp.write_text(json.dumps({"schema": MANIFEST_SCHEMA, "version": 1, **record}, indent=1) + "\n")
    os.replace(tmp, f)


def read_manifest(prefix: str | Path) -> dict:
    f = paths(prefix)["manifest"]
    if not f.is_file():
        raise FlmplanError(f"{prefix} has no {f.name}: prepare the corpus with `flmplan data prepare`, which "
                           "records its tokenizer.")
    try:
        man = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise FlmplanError(f"{f} is not a corpus manifest (not JSON).") from None
    if not isinstance(man, dict) or man.get("schema") != MANIFEST_SCHEMA or "tokenizer" not in man:
        raise FlmplanError(f"{f} is not a corpus manifest (schema {MANIFEST_SCHEMA}).")
    return man


# --- reading ---------------------------------------------------------------------------------------
@dataclass
class IndexedTokens:
    """A prepared corpus, memory-mapped: nothing of it is read until a sequence is asked for.

    The documents lie one after another in the .bin, so the token stream is the .bin itself; the
    index is checked against the .bin's size (a truncated .bin, or an .idx of another file)."""

    prefix: Path
    dtype: np.dtype
    documents: int
    n_tokens: int

    @classmethod
    def open(cls, prefix: str | Path) -> IndexedTokens:
        f = paths(prefix)
        for kind in ("bin", "idx"):
            if not f[kind].is_file():
                raise FlmplanError(f"{prefix} has no {f[kind].name}: a prepared corpus is PREFIX.bin with PREFIX.idx "
                                   "(`flmplan data prepare` writes both).")
        with open(f["idx"], "rb") as fh:
            head = fh.read(HEADER_BYTES)
            if len(head) < HEADER_BYTES or head[:len(MAGIC)] != MAGIC:
                raise FlmplanError(f"{f['idx']} is not a Megatron-LM indexed dataset index (no MMIDIDX header).")
            version, code = struct.unpack("<Q", head[9:17])[0], head[17]
            n, docs = struct.unpack("<QQ", head[18:34])
            dtype = next((d for d, c in DTYPE_CODES.items() if c == code), None)
            if version != 1 or dtype is None or dtype.kind not in "iu":
                raise FlmplanError(f"{f['idx']} has index version {version} and dtype code {code}; flmplan reads "
                                   "version 1 with integer token ids.")
            idx_size = os.fstat(fh.fileno()).st_size
            expected = HEADER_BYTES + n * 12 + docs * 8
            if idx_size not in (expected, expected + n):       # + n: Megatron's optional int8 modes
                raise FlmplanError(f"{f['idx']} is truncated or damaged ({idx_size} bytes where its counts need "
                                   f"{expected}); prepare the corpus again.")
            end = 0
            if n:
                fh.seek(HEADER_BYTES + (n - 1) * 4)
                last_len = struct.unpack("<i", fh.read(4))[0]
                fh.seek(HEADER_BYTES + n * 4 + (n - 1) * 8)
                last_ptr = struct.unpack("<q", fh.read(8))[0]
                end = last_ptr + last_len * dtype.itemsize
        size = f["bin"].stat().st_size
        if size != end:
            raise FlmplanError(f"{f['bin']} has {size:,} bytes where its index {f['idx'].name} says {end:,}: the .bin "
                               "is truncated, or the .idx belongs to another file; prepare the corpus again.")
        return cls(Path(prefix), dtype, n, end // dtype.itemsize)

    def read_rows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Rows of `length` ids from the token stream, one positioned read each into the batch's own
        buffer (as Megatron-LM's file reader does): nothing of the corpus is mapped into the process,
        whose memory stays flat however much of the corpus an epoch touches (docs/decisions.md#data-reads)."""
        out = np.empty((len(starts), length), dtype=self.dtype)
        fd = self._fd
        size = length * self.dtype.itemsize
        for row, start in enumerate(starts.tolist()):
            if os.preadv(fd, [memoryview(out[row]).cast("B")], start * self.dtype.itemsize) != size:
                raise FlmplanError(f"{paths(self.prefix)['bin']} ended before token {start + length:,}: it changed "
                                   "after the run started.")
        return out

    @cached_property
    def _fd(self) -> int:
        return os.open(paths(self.prefix)["bin"], os.O_RDONLY)

    @cached_property
    def tokens(self) -> np.ndarray:
        """The whole token stream as a read-only memory map (pages are read only when touched); for
        looking at a corpus, not for training on it (each page touched stays in the process)."""
        if self.n_tokens == 0:
            return np.zeros(0, self.dtype)
        return np.memmap(paths(self.prefix)["bin"], dtype=self.dtype, mode="r")

    def document(self, i: int) -> np.ndarray:
        """Document i's ids (its end-of-document id included), through the index."""
        f = paths(self.prefix)["idx"]
        idx = np.memmap(f, dtype=np.uint8, mode="r")
        length = int(np.frombuffer(idx, np.int32, 1, HEADER_BYTES + 4 * i)[0])
        ptr = int(np.frombuffer(idx, np.int64, 1, HEADER_BYTES + 4 * self.documents + 8 * i)[0])
        return np.asarray(self.tokens[ptr // self.dtype.itemsize: ptr // self.dtype.itemsize + length])


def describe(prefix: str | Path, data: IndexedTokens | None = None) -> dict:
    """What a plan records of a prepared corpus, after checking its files are whole (`data`: the corpus
    opened already)."""
    data = data or IndexedTokens.open(prefix)
    man = read_manifest(prefix)
    if man.get("tokens") != data.n_tokens or man.get("documents") != data.documents:
        raise FlmplanError(f"{paths(prefix)['manifest'].name} says {man.get('tokens')} tokens in "
                           f"{man.get('documents')} documents where {prefix}.bin/.idx hold {data.n_tokens} in "
                           f"{data.documents}: the files are from different runs; prepare the corpus again.")
    tok = man["tokenizer"]
    if tok["kind"] != "bytes" and not paths(prefix)["tokenizer"].is_file():
        raise FlmplanError(f"{prefix} has no {paths(prefix)['tokenizer'].name}, the tokenizer it was made with.")
    return {"prefix": str(Path(prefix).resolve()), "tokens": data.n_tokens, "documents": data.documents,
            "dtype": data.dtype.name, "tokenizer": tok}
