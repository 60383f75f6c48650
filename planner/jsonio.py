"""JSON files of every kind flmplan reads and writes (profiles, cases, plans): read with one
plain sentence when they are unusable, written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from planner.errors import FlmplanError


def cache_root() -> Path:
    """Where flmplan keeps what it can make again (byte-level corpora, a machine's MFU peak, a stopped
    profile's points): $FLMPLAN_CACHE, else ~/.cache/flmplan."""
    import os

    return Path(os.environ.get("FLMPLAN_CACHE") or Path.home() / ".cache" / "flmplan")


def read_json(path: str | Path, what: str, error: type[FlmplanError] = FlmplanError) -> Any:
    """A JSON document from a file, or `error` with one sentence saying why not."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise error(f"Cannot read {what} {path}: {err.strerror}.") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{what[0].upper()}{what[1:]} {path} is not valid JSON (line {err.lineno}: {err.msg}).") from None


def write_json(document: Any, path: str | Path) -> Path:
    """Write atomically (temporary file, then rename): a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(document, indent=1) + "\n")
    tmp.replace(path)
    return path
