"""`flmplan data prepare`: tokenize a corpus once."""

from __future__ import annotations

import contextlib
import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
import typer.core

from flmplan.common import check_output_file, stderr, stdout
from planner.errors import FlmplanError

data_app = typer.Typer(cls=typer.core.TyperGroup, no_args_is_help=True,
                       help="Prepare corpora: tokenize once into Megatron-LM indexed datasets.")


TextUnit = StrEnum("TextUnit", ["document", "paragraph", "line"])


@data_app.command("prepare")
def data_prepare(
    inputs: Annotated[list[Path], typer.Argument(
        help="Text files (.txt, .md), JSON lines (.jsonl, .json), parquet files, folders of them, or a dataset "
             "folder saved with datasets' save_to_disk.")],
    out: Annotated[Path, typer.Option(help="The corpus prefix: writes PREFIX.bin, PREFIX.idx (Megatron-LM's "
                                           "indexed dataset), PREFIX.manifest.json and the tokenizer.")],
    tokenizer: Annotated[Path | None, typer.Option(
        help="A Hugging Face tokenizer.json, or a folder with one (default: UTF-8 bytes).")] = None,
    train_tokenizer: Annotated[int | None, typer.Option(
        min=257, help="Train a byte-level BPE of this many entries on the corpus itself (tokenizers' trainer).")
    ] = None,
    field: Annotated[str, typer.Option(help="The text field of JSON lines, parquet and datasets.")] = "text",
    text_unit: Annotated[TextUnit, typer.Option(
        case_sensitive=False, help="What one document of a text file is (paragraph: blocks between blank lines).")
    ] = TextUnit.paragraph,
    eod_token: Annotated[str | None, typer.Option(
        help="The tokenizer's end-of-document token (default: the first of <|endoftext|>, </s>, ... it has).")
    ] = None,
    batch_docs: Annotated[int, typer.Option(
        min=1, help="Documents per encode_batch call (at most 4 MiB of text; a longer document goes alone, encoded in "
                    "pieces where the tokenizer allows).")] = 512,
    tokenizer_sample: Annotated[int, typer.Option(
        min=1 << 20, help="With --train-tokenizer: about this many bytes of the corpus to train on, every k-th "
                          "document (default 128 MiB; recorded in the manifest; the trainer's memory grows with it).")
    ] = 128 << 20,
    workers: Annotated[int | None, typer.Option(
        min=1, help="The tokenizer's threads (default: every core), the reading on a thread beside them; the "
                    "files are the same whatever the number.")] = None,
    per_input: Annotated[bool, typer.Option(
        help="One corpus per input file, FOLDER/shard-NNNNN, --out being the FOLDER, and FOLDER/corpus.json "
             "naming them (a mixture file for --data).")] = False,
    share: Annotated[str | None, typer.Option(
        help="With --per-input: K/N, this machine prepares the files i with i mod N = K (the same command on N "
             "machines, K = 0 … N − 1).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Tokenize a corpus once, on all cores, into what `flmplan run --data` and Megatron-LM read (resumable)."""
    from runtime.data.prepare import prepare

    if share is not None and not per_input:
        raise FlmplanError("--share splits the files of --per-input between machines; add --per-input.")
    if per_input:
        _prepare_shards(inputs, out, share, tokenizer, train_tokenizer, field, text_unit.value, eod_token,
                        batch_docs, tokenizer_sample, workers, as_json)
        return
    check_output_file(out, "--out", "corpus")
    with _stop_is_one_line(out):
        record = prepare(inputs, out, tokenizer=tokenizer, train_vocab=train_tokenizer, field=field,
                         unit=text_unit.value, eod_token=eod_token, batch_docs=batch_docs,
                         log=(lambda _: None) if as_json else stderr.print, progress=not as_json,
                         tokenizer_sample=tokenizer_sample, workers=workers)
    if as_json:
        print(json.dumps(record, indent=1))
        return
    tok = record["tokenizer"]
    stdout.print(f"wrote {out}.bin and {out}.idx: {record['documents']:,} documents, {record['tokens']:,} tokens "
                 f"({record['dtype']}), {tok['kind']} tokenizer of {tok['vocab']:,} entries, "
                 f"{record['tokens'] / max(record['tokenizing_s'], 1e-9):,.0f} tokens/s; "
                 f"train on it with `flmplan run PLAN --data {out}`")


@contextlib.contextmanager
def _stop_is_one_line(out: Path):
    """A prepare stopped by SIGTERM or Ctrl-C: its one line (where it stopped, that the same command
    continues), and the signal's exit code."""
    from runtime.data.prepare import PrepareStopped

    try:
        yield
    except PrepareStopped as stopped:
        stderr.print(f"{out}: {stopped}.")
        raise typer.Exit(128 + stopped.signum) from None


def _prepare_shards(inputs, out: Path, share: str | None, tokenizer, train_tokenizer, field: str, unit: str,
                    eod_token, batch_docs: int, tokenizer_sample: int, workers, as_json: bool) -> None:
    from runtime.data.shards import parse_share, prepare_shards

    if out.exists() and not out.is_dir():
        raise FlmplanError(f"--out {out} is a file; with --per-input it is the folder of the shards.")
    k_n = parse_share(share) if share else (0, 1)
    with _stop_is_one_line(out):
        result = prepare_shards(inputs, out, k_n, tokenizer=tokenizer, train_vocab=train_tokenizer, field=field,
                                unit=unit, tokenizer_sample=tokenizer_sample, eod_token=eod_token,
                                log=(lambda _: None) if as_json else stderr.print, batch_docs=batch_docs,
                                progress=not as_json, workers=workers)
    if as_json:
        print(json.dumps(result, indent=1))
        return
    stdout.print(f"share {result['share']}: prepared {len(result['prepared'])} of {result['files']} files "
                 f"({len(result['already_done'])} done before); {result['corpus']} names {result['shards']} shards, "
                 f"{result['tokens']:,} tokens; train on it with `flmplan run PLAN --data {result['corpus']}`")


@data_app.command("import")
def data_import(
    prefix: Annotated[Path, typer.Argument(
        help="A corpus another tool prepared: PREFIX.bin and PREFIX.idx (Megatron-LM's indexed dataset, e.g. "
             "corpus_text_document).")],
    tokenizer: Annotated[Path | None, typer.Option(
        help="The Hugging Face tokenizer.json it was made with, or a folder with one (default: UTF-8 bytes).")
    ] = None,
    eod_token: Annotated[str | None, typer.Option(
        help="The tokenizer's end-of-document token (default: the first of <|endoftext|>, </s>, ... it has).")
    ] = None,
) -> None:
    """Adopt a corpus prepared by Megatron-LM: check its .bin against its .idx and its ids against the tokenizer,
    then write the manifest, so it plans, runs and exports without tokenizing again."""
    from runtime.data.imported import import_corpus

    record = import_corpus(prefix, tokenizer, eod_token)
    tok = record["tokenizer"]
    stdout.print(f"imported {prefix}: {record['documents']:,} documents, {record['tokens']:,} tokens "
                 f"({record['dtype']}), {tok['kind']} tokenizer of {tok['vocab']:,} entries; train on it with "
                 f"`flmplan run PLAN --data {prefix}`")
