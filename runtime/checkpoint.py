"""Distributed checkpoints (torch.distributed.checkpoint) that survive kills and layout changes.

A checkpoint is written to `<tag>.tmp/`, checksummed into a manifest, then renamed to
`<tag>/` in one step: a reader sees a whole checkpoint or none. The manifest holds the
stage, step, tokens, data position, RNG state, layout and SHA-256 of every file. On resume
the newest checkpoint whose files match their checksums is used; a truncated or corrupted one
is named and skipped. DCP reshards on load, so a checkpoint saved under one layout loads into
another (and into a plain single-process model, which is how a stage's model is grown).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

MANIFEST = "manifest.json"
FLAT = StateDictOptions(flatten_optimizer_state_dict=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def state_dicts(chunks: list[torch.nn.Module], optimizers: list[torch.optim.Optimizer]) -> dict:
    """Model and (flattened) optimizer state of this rank's chunks, keyed by global names."""
    model, optim = {}, {}
    for c, o in zip(chunks, optimizers, strict=True):
        model.update(get_model_state_dict(c))
        optim.update(get_optimizer_state_dict(c, o, options=FLAT))
    return {"model": model, "optim": optim}


def save(folder: Path, tag: str, chunks: list, optimizers: list, manifest: dict) -> Path:
    """Write checkpoint `folder/tag` atomically; every rank calls this."""
    final, tmp = folder / tag, folder / f"{tag}.tmp"
    rank = dist.get_rank()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    dcp.save(state_dicts(chunks, optimizers), checkpoint_id=str(tmp))
    dist.barrier()
    if rank == 0:
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / MANIFEST).write_text(json.dumps({**manifest, "files": files}, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    dist.barrier()
    return final


def verify(path: Path) -> str | None:
    """None if the checkpoint is whole, else what is wrong with it."""
    mf = path / MANIFEST
    if not mf.exists():
        return "it has no manifest (the write did not finish)"
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError:
        return "its manifest is not valid JSON"
    for name, digest in manifest.get("files", {}).items():
        f = path / name
        if not f.exists():
            return f"{name} is missing"
        if _sha256(f) != digest:
            return f"{name} does not match its checksum (truncated or corrupted)"
    return None


def checkpoints(folder: Path) -> list[Path]:
    """Finished checkpoints, newest first (by the global step in their manifest)."""
    if not folder.exists():
        return []
    found = []
    for p in folder.iterdir():
        if p.is_dir() and not p.name.endswith(".tmp"):
            try:
                step = json.loads((p / MANIFEST).read_text())["global_step"]
            except (OSError, json.JSONDecodeError, KeyError):
                step = -1
            found.append((step, p))
    return [p for _, p in sorted(found, key=lambda t: t[0], reverse=True)]


def latest_good(folder: Path, log=print) -> tuple[Path, dict] | None:
    """The newest checkpoint that verifies, decided on rank 0 and shared with every rank."""
    choice = [None]
    if dist.get_rank() == 0:
        for path in checkpoints(folder):
            problem = verify(path)
            if problem is None:
                choice = [(str(path), json.loads((path / MANIFEST).read_text()))]
                break
            log(f"checkpoint {path} is unusable: {problem}; falling back to the one before it")
    dist.broadcast_object_list(choice, src=0)
    if choice[0] is None:
        return None
    path, manifest = choice[0]
    return Path(path), manifest


def load(path: Path, chunks: list, optimizers: list) -> None:
    """Load a checkpoint into this rank's chunks and optimizers, whatever layout wrote it."""
    sd = state_dicts(chunks, optimizers)
    dcp.load(sd, checkpoint_id=str(path))
    for c, o in zip(chunks, optimizers, strict=True):
        names = set(get_model_state_dict(c))
        set_model_state_dict(c, {k: v for k, v in sd["model"].items() if k in names},
                             options=StateDictOptions(strict=False))
        own = set(get_optimizer_state_dict(c, o, options=FLAT))
        set_optimizer_state_dict(c, o, {k: v for k, v in sd["optim"].items() if k in own}, options=FLAT)


def load_full(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, dict]:
    """Load into a plain (unsharded) model and optimizer on every rank; return the Adam state
    keyed by parameter name, as the growth operators want it."""
    load(path, [model], [optimizer])
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: state for p, state in optimizer.state.items()}


def set_full_optimizer_state(chunk: torch.nn.Module, optimizer: torch.optim.Optimizer,
                             state: dict[str, dict], lr: float) -> None:
    """Put a name-keyed full Adam state (from growth) into a (sharded) chunk's optimizer."""
    names = [n for n, _ in chunk.named_parameters()]
    group = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    osd = {"state": {n: state[n] for n in names if n in state},
           "param_groups": [{**group, "lr": lr, "params": names}]}
    set_optimizer_state_dict(chunk, optimizer, osd, options=StateDictOptions(full_state_dict=True))
