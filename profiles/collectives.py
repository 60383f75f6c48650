"""Collective bandwidth between local processes through torch.distributed, and what the
runtime's tensor-parallel layer costs beyond its kernels and its collectives.

NCCL between the GPUs of this machine, or gloo between `nproc` CPU processes. Reported as
bus bandwidth (nccl-tests convention): all-reduce moves 2(n−1)/n of the buffer per rank,
all-gather and reduce-scatter (n−1)/n, send/recv the buffer once.
"""

from __future__ import annotations

import os
import socket
import statistics
import tempfile
from dataclasses import replace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from planner.cost.device_profile import bus_factor
from profiles.timing import median_and_spread, time_interleaved, time_lockstep

OPS = ("all_reduce", "all_gather", "reduce_scatter", "send_recv")
# torch 2.13 renamed the tensor collectives; the GPU image's torch 2.11 has only the old names.
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, nproc: int, port: int, backend: str, sizes: list[int], reps: int, out_path: str,
            dtype: torch.dtype) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=rank, world_size=nproc)
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    rank_cores = None
    if backend == "nccl":
        torch.cuda.set_device(device)
    else:     # as `flmplan run` starts CPU ranks: the cores shared out among them, each rank's own pinned
        from runtime.parallel.cores import pin_to_own_cores, rank_threads, usable_cores

        rank_cores = usable_cores() / nproc
        torch.set_num_threads(rank_threads(nproc))
        pin_to_own_cores(rank, nproc)
        rank_cores = min(torch.get_num_threads(), rank_cores)    # the cores each rank computed on
    rows = [row for nbytes in sizes for row in _measure_size(rank, nproc, nbytes, device, reps)]
    try:
        tp, error = {sp: tensor_parallel_overhead(nproc, device, dtype, sp, reps=10 * reps + 1)
                     for sp in (False, True)}, None
    except Exception as err:     # a profile without the probe's figures still serves: say why they are missing
        tp, error = None, f"{type(err).__name__}: {err}"
    if rank == 0:
        import json

        entry = tensor_parallel_entry(tp, error, nproc, rank_cores)
        with open(out_path, "w") as f:
            json.dump({"rows": rows, "tensor_parallel": entry}, f)
    dist.barrier()
    dist.destroy_process_group()


def tensor_parallel_entry(tp: dict[bool, dict] | None, error: str | None, nproc: int,
                          rank_cores: float | None) -> dict:
    """The profile's `collectives.tensor_parallel` from the probe's figures without and with
    sequence parallelism. A failed probe leaves every figure out, not zero, so that the planner
    charges what it charges without a probe (AdamW's bytes and launches, no host time) and the
    CLI can say why (`probe.plain.error`)."""
    probe = {**TP_PROBE, "ranks": nproc, "rank_cores": rank_cores}
    if tp is None:
        return {"probe": {**probe, "plain": {"error": error}, "sequence_parallel": {"error": error}}}
    return {
        "layer_pass_overhead_s": tp[False]["layer_pass_s"],
        "sequence_parallel_layer_pass_overhead_s": tp[True]["layer_pass_s"],
        "micro_batch_overhead_s": tp[False]["micro_batch_s"],
        "sequence_parallel_micro_batch_overhead_s": tp[True]["micro_batch_s"],
        "selective_recompute_layer_overhead_s": tp[False]["selective_recompute_layer_s"],
        "sequence_parallel_selective_recompute_layer_overhead_s": tp[True]["selective_recompute_layer_s"],
        # The step after the backward (timed in the probe without sequence parallelism):
        # seconds per layer and the rest, with the probe's parameters per layer and the
        # rest (whole, not sharded) beside them.
        "optimizer": {**{f"{kind}_{part}_s": tp[False][f"optimizer_{kind}_{part}_s"]
                         for kind in ("sharded", "unsharded") for part in ("layer", "fixed")},
                      "layer_params": tp[False]["layer_params"], "fixed_params": tp[False]["fixed_params"]},
        "probe": {**probe, "plain": tp[False], "sequence_parallel": tp[True]},
        "method": "ParallelModel.train_batch of one micro-batch on 1- and 3-layer probe models, sharded "
                  "and unsharded: per layer pass, half the sharded slope over the unsharded one less the "
                  "layer's collectives timed alone; per micro-batch, the rest of the 1-layer difference "
                  "(vocabulary-parallel embedding, output layer and loss); per layer under selective "
                  "recompute, the 3- over 1-layer slope with it over the slope without, less a layer pass "
                  "and the re-run all-gathers timed alone; the step after the backward (the runtime's "
                  "clip, the fused AdamW step, gradients zeroed) on the same models, sharded and whole, "
                  "per layer (the 3- over 1-layer slope) and the rest; the same models' step under FSDP over "
                  "the ranks (zero 3). Every variant timed once per "
                  "round, in turns; each figure the median over the rounds, with its spread "
                  "(interquartile range / median). The planner charges, where the probe has them, what "
                  "its own model leaves of the sharded per-layer and 1-layer times instead of these "
                  "differences (planner/cost/step.py probe_residuals)",
    }


# Calls per op and size: small messages are cheap and their time is all latency, the figure a
# shared host disturbs most, so they get many (every rank makes the same number).
SMALL_MESSAGE_CALLS_BYTES = 1 << 25


def _reps_for(nbytes: int, reps: int) -> int:
    return max(reps, min(50, SMALL_MESSAGE_CALLS_BYTES // max(1, nbytes)))


def _measure_size(rank: int, nproc: int, nbytes: int, device: torch.device, reps: int) -> list[dict]:
    numel = max(nproc, nbytes // 4) // nproc * nproc
    buf = torch.ones(numel, device=device)
    shard = torch.ones(numel // nproc, device=device)
    peer = rank ^ 1

    def send_recv() -> None:
        if peer >= nproc:
            return
        if rank % 2 == 0:
            dist.send(buf, peer)
            dist.recv(buf, peer)
        else:
            dist.recv(buf, peer)
            dist.send(buf, peer)

    ops = {
        "all_reduce": lambda: dist.all_reduce(buf),
        "all_gather": lambda: _all_gather(buf, shard),
        "reduce_scatter": lambda: _reduce_scatter(shard, buf),
        "send_recv": send_recv,
    }
    rows = []
    for op, fn in ops.items():
        dist.barrier()
        t = time_lockstep(fn, device, warmup=3, reps=_reps_for(nbytes, reps))
        if op == "send_recv":
            t /= 2  # a round trip is two transfers
        size = numel * 4
        rows.append({"op": op, "ranks": nproc, "bytes": size, "time_s": t,
                     "busbw_gbps": bus_factor(op, nproc) * size / t / 1e9})
    return rows


# A model small enough that its kernels are mostly their dispatch: what the runtime adds around
# tensor parallelism (DTensor's sharding propagation and redistribution on the host, the
# vocabulary-parallel ends, their small collectives) is then most of its time. The planner charges
# it alike at any width; on a CPU it grows with the tensors (2.3× at 8× the activations,
# BENCHMARKS.md#probe-kernels-cores), which a second, wider probe measured too noisily to charge.
TP_PROBE = {"hidden": 128, "heads": 8, "seq": 64, "micro_batch": 2, "vocab": 256}


def _whole_step(m, x: torch.Tensor, y: torch.Tensor):
    """One micro-batch's forward and backward of an unsharded model."""
    from runtime.model.decoder import causal_lm_loss

    return lambda: causal_lm_loss(m(x), y).backward()


def _whole_tail(m):
    """A single process's step after its backward (runtime/training/trainer.py): the gradient norm and
    clip as multi-tensor kernels, the fused AdamW step, the gradients zeroed."""
    from runtime.parallel.optim import make_optimizer

    opt = make_optimizer(m, 1e-4)

    def tail() -> None:
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return tail


def _sharded_tail(pm):
    """The same on DTensor shards, through the runtime's own clip (one all-reduce of the norm)."""
    from runtime.parallel.optim import make_optimizer

    opts = [make_optimizer(c, 1e-4) for c in pm.chunks]

    def tail() -> None:
        pm.clip_and_unscale(1.0)
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)
    return tail


def _collective_steps(elements: int, nproc: int, device: torch.device, dtype: torch.dtype,
                      sequence_parallel: bool) -> dict:
    """A layer's tensor-parallel collectives alone, and what a selective recompute re-runs of them."""
    full = torch.empty(elements, device=device, dtype=dtype)
    part = torch.empty(elements // nproc, device=device, dtype=dtype)

    def layer_collectives() -> None:
        # One layer, forward and backward: two all-reduces of the activations each, or with
        # sequence parallelism two all-gathers and two reduce-scatters each (planner/cost/step.py
        # tp_comm_per_pass_s; runtime/model/decoder.py column_parallel_input).
        for _ in range(4):
            if sequence_parallel:
                _all_gather(full, part)
                _reduce_scatter(part, full)
            else:
                dist.all_reduce(full)

    def regathers() -> None:
        # What a selective recompute re-runs of them: the two all-gathers (runtime/model/decoder.py _saved_ops).
        for _ in range(2 if sequence_parallel else 0):
            _all_gather(full, part)

    return {"layer_collectives_s": layer_collectives, "regathers_s": regathers}


def tensor_parallel_overhead(nproc: int, device: torch.device, dtype: torch.dtype, sequence_parallel: bool,
                             reps: int = 9) -> dict:
    """What the runtime's tensor parallelism costs beyond the kernels of its shards and the
    collectives of its layers: one micro-batch of `train_batch` on 1- and 3-layer models, sharded
    over the nproc ranks and unsharded; the difference in the layers' slope is per layer pass, the
    rest (the vocabulary-parallel embedding, output layer and loss) per micro-batch; the same
    sharded models under selective recompute give its cost per layer. Without sequence
    parallelism the step after the backward (clip, AdamW, zero) is timed on them too, sharded and
    whole, and the models' step under FSDP over the ranks. The planner takes its charges from
    these times (planner/cost/step.py probe_residuals, optimizer_step_s). Every rank calls this."""
    from planner.model.specs import Layout
    from runtime.model.decoder import Decoder, DecoderConfig
    from runtime.parallel.parallelize import make_mesh, parallelize

    h, seq, b, vocab = TP_PROBE["hidden"], TP_PROBE["seq"], TP_PROBE["micro_batch"], TP_PROBE["vocab"]
    layout = Layout(tp=nproc, pp=1, dp=1, micro_batch=b, global_batch=b, sequence_parallel=sequence_parallel,
                    zero=0)
    mesh = make_mesh(layout, device.type)
    tokens = torch.randint(0, vocab, (b, seq + 1), generator=torch.Generator().manual_seed(0))
    x, y = tokens[:, :-1].to(device), tokens[:, 1:].to(device)

    def model(layers: int) -> Decoder:
        torch.manual_seed(0)
        cfg = DecoderConfig(layers=layers, hidden=h, heads=TP_PROBE["heads"], ffn=4 * h, vocab=vocab, seq=seq)
        return Decoder(cfg).to(device=device, dtype=dtype)

    selective = replace(layout, recompute="selective")
    steps = _collective_steps(b * seq * h, nproc, device, dtype, sequence_parallel)
    if not sequence_parallel:
        # The same models under FSDP over the ranks (zero 3): its hooks, gathers and reductions
        # on the host, which the planner holds its own charge against (planner/cost/step.py).
        fsdp = Layout(tp=1, pp=1, dp=nproc, micro_batch=b, global_batch=b * nproc, zero=3)
        fsdp_mesh = make_mesh(fsdp, device.type)
        for layers in (1, 3):
            steps[f"fully_sharded_{layers}_layers_s"] = (
                lambda pm=parallelize(model(layers), fsdp, fsdp_mesh, device): pm.train_batch(x, y))
    for layers in (1, 3):
        sharded = parallelize(model(layers), layout, mesh, device)
        recomputed = parallelize(model(layers), selective, mesh, device)
        plain = model(layers)
        steps[f"tensor_parallel_{layers}_layers_s"] = lambda pm=sharded: pm.train_batch(x, y)
        steps[f"unsharded_{layers}_layers_s"] = _whole_step(plain, x, y)
        steps[f"selective_recompute_{layers}_layers_s"] = lambda pm=recomputed: pm.train_batch(x, y)
        if not sequence_parallel:     # which does not change the step's tensors: timed once
            # Each after its model's step above, whose gradients it uses and frees, as the runtime
            # does (the warm-up and every round call them in this order).
            steps[f"optimizer_sharded_{layers}_layers_s"] = _sharded_tail(sharded)
            steps[f"optimizer_unsharded_{layers}_layers_s"] = _whole_tail(plain)
    # The figures below are differences of these times: taken in turns, and each figure is the
    # median of its value in every round (their spread beside it).
    rounds = time_interleaved(steps, device, warmup=3, rounds=reps)
    one = model(1)
    layer_params = sum(p.numel() for p in one.blocks["0"].parameters())
    return {**{name: statistics.median(r[name] for r in rounds) for name in steps},
            **_overheads([_round_overheads(r) for r in rounds]),
            "layer_params": layer_params, "fixed_params": sum(p.numel() for p in one.parameters()) - layer_params}


def _round_overheads(t: dict[str, float]) -> dict[str, float]:
    """One round's figures. Per layer pass: half the sharded 3- over 1-layer slope over the
    unsharded one, less the layer's collectives timed alone; per micro-batch: the rest of the
    1-layer difference. Selective recompute per layer, beyond what the cost model charges for
    it (the re-run forward's host time around tensor parallelism, its all-gathers, and its
    LayerNorm and activation kernels, a few µs at the probe's size): the selective checkpoint's
    dispatch mode, which sees every operation of the forward and of its re-run on the host."""
    def slope(name: str) -> float:
        """Per layer (forward + backward): the 3- over the 1-layer model's time."""
        return (t[f"{name}_3_layers_s"] - t[f"{name}_1_layers_s"]) / 2

    sharded = slope("tensor_parallel")
    pass_s = max(0.0, sharded - slope("unsharded") - t["layer_collectives_s"]) / 2
    ends = t["tensor_parallel_1_layers_s"] - t["unsharded_1_layers_s"] - t["layer_collectives_s"] - 2 * pass_s
    selective = slope("selective_recompute") - sharded - pass_s - t["regathers_s"]
    extra = {}
    # FSDP's per layer, as the planner holds its own charge against it (planner/cost/step.py).
    if "fully_sharded_1_layers_s" in t:
        extra["fully_sharded_layer_s"] = slope("fully_sharded")
    # The step after the backward (clip, AdamW, zero), per layer and the rest, on shards and whole:
    # measured with the kernels' own work in it, which the cost model takes out (planner/cost/step.py).
    for kind in ("sharded", "unsharded") if "optimizer_sharded_1_layers_s" in t else ():
        per_layer = slope(f"optimizer_{kind}")
        extra[f"optimizer_{kind}_layer_s"] = max(0.0, per_layer)
        extra[f"optimizer_{kind}_fixed_s"] = max(0.0, t[f"optimizer_{kind}_1_layers_s"] - per_layer)
    # The sharded models' time per layer (forward + backward), without and with selective
    # recompute: the planner holds its own charge for the probe against these (planner/cost/step.py).
    return {"layer_pass_s": pass_s, "micro_batch_s": max(0.0, ends), "selective_recompute_layer_s": max(0.0, selective),
            "sharded_layer_s": sharded, "selective_recompute_sharded_layer_s": slope("selective_recompute"), **extra}


def _overheads(rounds: list[dict[str, float]]) -> dict[str, float]:
    out = {}
    for name in rounds[0]:
        out[name], out[name.removesuffix("_s") + "_spread"] = median_and_spread([r[name] for r in rounds])
    return out


def measure_collectives(nproc: int, backend: str, sizes: list[int], reps: int = 3,
                        dtype: torch.dtype = torch.float32) -> tuple[list[dict], dict]:
    """Spawn nproc processes, measure every op at every size and the tensor-parallel layer's
    overhead; return rank 0's rows and that overhead."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.json")
        mp.spawn(_worker, args=(nproc, _free_port(), backend, sizes, reps, out, dtype), nprocs=nproc, join=True)
        import json

        with open(out) as f:
            found = json.load(f)
        return found["rows"], found["tensor_parallel"]
