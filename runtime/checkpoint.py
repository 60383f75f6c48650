"""Distributed checkpoints (torch.distributed.checkpoint) that survive kills and layout changes.

A checkpoint is written to `<tag>.tmp/`, checksummed into a manifest, then renamed to
`<tag>/` in one step: a reader sees a whole checkpoint or none. The manifest holds the
stage, step, tokens, data position, RNG state, layout and SHA-256 of every file. On resume
the newest checkpoint whose files match their checksums is used; a truncated or corrupted one
is named and skipped. DCP reshards on load, so a checkpoint saved under one layout loads into
another. Growth reads boxes of the old stage's tensors (`load_regions`), each rank only the
part that lands in its own shards of the grown model; `save_chunks` writes a checkpoint a box at a
time, each computed as it is written (`flmplan grow` for other tools).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex, TensorProperties
from torch.distributed.checkpoint.planner import LoadPlan, TensorWriteData, WriteItem, WriteItemType
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from planner.errors import FlmplanError

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


MANIFEST_KEYS = ("stage", "step", "data_position", "global_step", "files")


def stage_index(manifest: dict) -> int:
    """The plan's index (from 0) of a checkpoint's growth stage. Manifests number stages from 1,
    like the console and metrics.jsonl; those without `stage_numbering` were written before
    that and count from 0."""
    return manifest["stage"] - manifest.get("stage_numbering", 0)


def read_manifest(path: Path) -> tuple[dict | None, str | None]:
    """(manifest, None), or (None, what is wrong with it): missing, not JSON, not an object,
    or without the keys a resume needs."""
    mf = path / MANIFEST
    if not mf.exists():
        return None, "it has no manifest (the write did not finish)"
    try:
        manifest = json.loads(mf.read_text())
    except (ValueError, OSError):            # not UTF-8, not JSON, unreadable
        return None, "its manifest is not valid JSON"
    if not isinstance(manifest, dict):
        return None, "its manifest is not a JSON object"
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        return None, f"its manifest lacks {', '.join(missing)}"
    if not isinstance(manifest["files"], dict) or not manifest["files"]:
        return None, "its manifest lists no files"
    return manifest, None


def verify(path: Path, manifest: dict | None = None) -> str | None:
    """None if the checkpoint is whole, else what is wrong with it (`manifest`: already read)."""
    if manifest is None:
        manifest, problem = read_manifest(path)
        if problem:
            return problem
    for name, digest in manifest["files"].items():
        f = path / name
        if not f.exists():
            return f"{name} is missing"
        if _sha256(f) != digest:
            return f"{name} does not match its checksum (truncated or corrupted)"
    return None


def checkpoints(folder: Path) -> list[Path]:
    """Finished checkpoints, newest first (by the global step in their manifest; those whose
    manifest cannot be read last)."""
    if not folder.exists():
        return []
    found = []
    for p in folder.iterdir():
        if p.is_dir() and not p.name.endswith(".tmp"):
            manifest, _ = read_manifest(p)
            step = manifest["global_step"] if manifest and isinstance(manifest["global_step"], int) else -1
            found.append((step, p))
    return [p for _, p in sorted(found, key=lambda t: t[0], reverse=True)]


def latest_good(folder: Path, log=print, from_scratch: bool = False) -> tuple[Path, dict] | None:
    """The newest checkpoint that verifies, decided on rank 0 and shared with every rank; every
    unusable one newer than it is named. None when there are no checkpoints; when there are some
    but none is usable, the run stops (starting over would discard all progress) unless asked
    to start from scratch."""
    choice: list = [None]
    if dist.get_rank() == 0:
        found = checkpoints(folder)
        for path in found:
            manifest, problem = read_manifest(path)
            problem = problem or verify(path, manifest)
            if problem is None:
                choice = [(str(path), manifest)]
                break
            log(f"checkpoint {path} is unusable: {problem}; skipping it")
        else:
            if found and not from_scratch:
                choice = [("none", len(found))]
    dist.broadcast_object_list(choice, src=0)
    if choice[0] is None:
        return None
    if choice[0][0] == "none":
        raise FlmplanError(f"None of the {choice[0][1]} checkpoints in {folder} is usable (each is named above); "
                           "restore one, or pass --from-scratch to start the run over.")
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


class _RegionLoadPlanner(DefaultLoadPlanner):
    """Reads, for each requested name, one box [offsets, offsets + sizes) of the saved global
    tensor into a buffer of that box's size: DCP's resharding read applied to a region instead of
    a whole shard, so a rank never reads more than it asked for."""

    def __init__(self, regions: dict[str, tuple[str, tuple[int, ...], tuple[int, ...]]]) -> None:
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.regions = regions

    def create_local_plan(self) -> LoadPlan:
        items = []
        for key, (fqn, offsets, sizes) in self.regions.items():
            md = self.metadata.state_dict_metadata[fqn]
            chunk = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes))
            # Read from the saved tensor `fqn` into the buffer `key` (several boxes may share a source).
            items += [replace(item, dest_index=MetadataIndex(key, item.dest_index.offset, item.dest_index.index))
                      for item in create_read_items_for_chunk_list(fqn, md, [chunk])]
        return LoadPlan(items)

    def lookup_tensor(self, index: MetadataIndex) -> torch.Tensor:
        return self.state_dict[index.fqn]


def saved_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Global shape of every tensor in a checkpoint, read from its metadata alone."""
    md = FileSystemReader(str(path)).read_metadata()
    return {k: tuple(v.size) for k, v in md.state_dict_metadata.items() if hasattr(v, "size")}


def load_regions(path: Path, regions: dict[str, tuple[str, tuple[int, ...], tuple[int, ...]]],
                 dtypes: dict[str, torch.dtype], device: torch.device) -> dict[str, torch.Tensor]:
    """Boxes of saved tensors (key → (saved name, offsets, sizes)), each rank its own; every rank
    calls this. How growth reads the old stage without any rank holding the whole model."""
    buffers = {k: torch.empty(sizes, dtype=dtypes[k], device=device) for k, (_, _, sizes) in regions.items()}
    dcp.load(buffers, checkpoint_id=str(path), planner=_RegionLoadPlanner(regions))
    return buffers


# A box of a saved tensor: its name, global shape, dtype, and the box's offsets and sizes.
Box = tuple[str, tuple[int, ...], torch.dtype, tuple[int, ...], tuple[int, ...]]


class _BoxSavePlanner(DefaultSavePlanner):
    """Plans each tensor as the boxes given and computes a box only when DCP writes it (`make`), so
    that one box is in memory at a time; the state dict's objects are written as DCP writes them."""

    def __init__(self, boxes: list[Box], make) -> None:
        super().__init__()
        self.boxes, self.make = boxes, make

    def create_local_plan(self):
        plan = super().create_local_plan()
        items = [WriteItem(index=MetadataIndex(fqn, torch.Size(offsets)), type=WriteItemType.SHARD,
                           tensor_data=TensorWriteData(
                               chunk=ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes)),
                               properties=TensorProperties(dtype=dtype), size=torch.Size(shape)))
                 for fqn, shape, dtype, offsets, sizes in self.boxes]
        self.plan = replace(plan, items=[*plan.items, *items])
        return self.plan

    def resolve_data(self, write_item: WriteItem):
        if write_item.type == WriteItemType.BYTE_IO:
            return super().resolve_data(write_item)
        return self.make(write_item.index.fqn, tuple(write_item.index.offset),
                         tuple(write_item.tensor_data.chunk.sizes))


def save_chunks(folder: Path, boxes: list[Box], make, objects: dict | None = None) -> None:
    """A DCP checkpoint written one box at a time: make(name, offsets, sizes) computes a box when it is
    written, in the order given, each into its own file, so memory holds one box, never the model.
    Readers (DCP, megatron-core) read the boxes that overlap what they need."""
    from torch.distributed.checkpoint import FileSystemWriter

    writer = FileSystemWriter(str(folder), single_file_per_rank=False, thread_count=1)
    dcp.save(dict(objects or {}), storage_writer=writer, planner=_BoxSavePlanner(boxes, make))


def stage_checkpoints(target: Path) -> tuple[list[tuple[int, Path]], Path | None]:
    """([(stage, checkpoint)], the run's plan.json or None): the newest good checkpoint of every stage
    of a run folder, or the one checkpoint given."""
    if not target.exists():
        raise FlmplanError(f"{target} does not exist; give a run folder (flmplan run --out) or a checkpoint in it.")
    if (target / "manifest.json").exists():
        manifest, problem = read_manifest(target)
        if problem or (problem := verify(target, manifest)):
            raise FlmplanError(f"Checkpoint {target} is unusable: {problem}.")
        plan = target.parent.parent / "plan.json"
        return [(stage_index(manifest) + 1, target)], plan if plan.exists() else None
    folder = target / "checkpoints"
    found = {}
    for path in checkpoints(folder):                     # newest first
        manifest, problem = read_manifest(path)
        if problem or verify(path, manifest):
            continue
        found.setdefault(stage_index(manifest) + 1, path)
    if not found:
        raise FlmplanError(f"{target} has no usable checkpoint (nothing to score or export); train it with "
                           "`flmplan run`, or give a checkpoint folder.")
    plan = target / "plan.json"
    return sorted(found.items()), plan if plan.exists() else None


def load_whole(path: Path, parametrization: dict | None = None, verified: bool = False):
    """A flmplan checkpoint (any layout: DCP reshards on load) as one whole Decoder on this process;
    `verified`: the caller has checked its files against their checksums already (stage_checkpoints),
    so they are not hashed again."""
    from planner.plan.plan_file import PlanParametrization
    from runtime.model.decoder import Decoder, DecoderConfig

    manifest, problem = read_manifest(path)
    if problem or (not verified and (problem := verify(path, manifest))):
        raise FlmplanError(f"Checkpoint {path} is unusable: {problem}.")
    shapes = saved_shapes(path)
    par = PlanParametrization(**(parametrization or {}))
    cfg = DecoderConfig(**manifest["model"], **par.config_fields(), teacher_head="model.teacher.weight" in shapes)
    model = Decoder(cfg)
    params = dict(model.named_parameters())
    regions = {n: (f"model.{n}", (0,) * p.dim(), tuple(p.shape)) for n, p in params.items()}
    import warnings

    with warnings.catch_warnings():      # DCP's note that it reads in one process, which is the intent here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        read = load_regions(path, regions, {n: p.dtype for n, p in params.items()}, torch.device("cpu"))
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(read[n])
    return model.eval()
