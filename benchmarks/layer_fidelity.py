"""Whole-layer fidelity of the profile-driven cost model.

1. A measured profile (from `flmplan profile`): the cost model, fed only the profile's GEMM,
   attention and memory-bound tables (on a CPU the host's time per layer pass that the profile's
   probe measured, as a step charges it; on a GPU the host's time per kernel to issue the
   runtime's layer, which the issue probe measured at a shape of its own), predicts the whole
   decoder layers that the same profile measured directly (forward + backward, and backward with
   full recompute).
2. The built-in A100 profile against Korthikanti et al. 2022, Table 4 (one 22B layer at
   tp = 8, micro-batch 4, on A100): baseline, sequence parallel, full and selective recompute.

    python benchmarks/layer_fidelity.py [PROFILE.json] [--json]    (default: profile this CPU, quick)
    python benchmarks/layer_fidelity.py --korthikanti [--json]      (part 2 alone: no profiling, cheap)
"""

from __future__ import annotations

import argparse
import json
from importlib import resources

from planner.cost.compute import layer_time
from planner.cost.device_profile import Profile, builtin_profile, load_profile
from planner.cost.step import device_models, model_host_s, tp_comm_per_pass_s
from planner.model.specs import Layout, ModelSpec


def predict_layer(profile: Profile, model: ModelSpec, layout: Layout) -> tuple[float, float, float]:
    """(forward, backward, backward with full recompute) of one layer at this layout, TP included,
    with the host's time per pass on a CPU (planner/cost/step.py estimate_step)."""
    dev, net = device_models(profile)
    lt = layer_time(dev, model, layout)
    tp_time = tp_comm_per_pass_s(net, model, layout, dev.bytes_per_element, gpus_per_node=8)
    host, _ = model_host_s(dev, net)
    fwd = lt.forward + tp_time + host
    bwd = lt.backward + tp_time + host
    if layout.recompute == "selective":
        bwd += lt.attention_core_fwd
    return fwd, bwd, bwd + fwd


def measured_profile_rows(profile: Profile) -> list[dict]:
    rows = []
    for p in profile.layers:
        model = ModelSpec(layers=1, hidden=p["hidden"], heads=p["heads"], ffn=p["ffn"], vocab=8, seq=p["seq"])
        layout = Layout(tp=1, pp=1, dp=1, micro_batch=p["micro_batch"], global_batch=p["micro_batch"])
        fwd, bwd, bwd_rc = predict_layer(profile, model, layout)
        measured = p["forward_s"] + p["backward_s"]
        rows.append({
            "shape": f"h{p['hidden']} a{p['heads']} s{p['seq']} b{p['micro_batch']}",
            "measured_ms": measured * 1e3, "predicted_ms": (fwd + bwd) * 1e3,
            "error": (fwd + bwd) / measured - 1,
            "recompute_error": (fwd + bwd_rc) / (p["forward_s"] + p["backward_recompute_s"]) - 1,
        })
    return rows


def korthikanti_rows() -> list[dict]:
    ref = json.loads(resources.files("planner").joinpath("data/layer_22b_a100.json").read_text())
    m = ref["model"]
    model = ModelSpec(layers=1, hidden=m["hidden"], heads=m["heads"], ffn=m["ffn"], vocab=8, seq=m["seq"])
    profile = builtin_profile(ref["gpu"])
    base = Layout(tp=ref["tp"], pp=1, dp=1, micro_batch=ref["micro_batch"], global_batch=ref["micro_batch"],
                  attention="unfused")
    modes = {
        "baseline": base,
        "sequence_parallel": base.with_(sequence_parallel=True),
        "full_recompute": base.with_(recompute="full"),
        "selective_recompute": base.with_(recompute="selective"),
        "selective_recompute+sequence_parallel": base.with_(recompute="selective", sequence_parallel=True),
    }
    rows = []
    for r in ref["rows"]:
        fwd, bwd, bwd_rc = predict_layer(profile, model, modes[r["mode"]])
        bwd_pred = bwd_rc if r["mode"] == "full_recompute" else bwd
        rows.append({"mode": r["mode"], "forward_ms": (r["forward_ms"], fwd * 1e3),
                     "backward_ms": (r["backward_ms"], bwd_pred * 1e3),
                     "total_error": (fwd + bwd_pred) * 1e3 / (r["forward_ms"] + r["backward_ms"]) - 1})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile", nargs="?", help="a profile to check (default: profile this CPU, quick)")
    ap.add_argument("--korthikanti", action="store_true", help="only the built-in A100 profile against Table 4")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result: dict = {"korthikanti": korthikanti_rows()}
    if not args.korthikanti:
        if args.profile:
            profile = load_profile(args.profile)
        else:
            from profiles.measure import run_profile

            profile = run_profile("cpu", quick=True)
        result |= {"profile": f"{profile.name} ({profile.source}, {profile.device['name']}, {profile.dtype})",
                   "layers": measured_profile_rows(profile)}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    if "layers" in result:
        print(f"Profile {result['profile']}")
        print(f"{'layer':24} {'measured ms':>12} {'predicted ms':>13} {'error':>7} {'with full recompute':>20}")
        for r in result["layers"]:
            print(f"{r['shape']:24} {r['measured_ms']:12.2f} {r['predicted_ms']:13.2f} {r['error']:+7.1%} "
                  f"{r['recompute_error']:+20.1%}")
        print()
    print("Korthikanti et al. 2022, Table 4 (22B layer, tp 8, A100) with the built-in a100-80gb profile")
    print(f"{'mode':40} {'fwd ms pub/pred':>16} {'bwd ms pub/pred':>16} {'fwd+bwd error':>14}")
    for r in result["korthikanti"]:
        f, b = r["forward_ms"], r["backward_ms"]
        print(f"{r['mode']:40} {f[0]:7.1f}/{f[1]:6.1f}  {b[0]:7.1f}/{b[1]:6.1f}  {r['total_error']:+13.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
