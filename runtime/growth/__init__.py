"""Growth: MSG applied shard by shard, no rank holding the whole model (msg.py), the mask-free,
function-preserving growth of other tools' checkpoints for `flmplan grow` (targets.py), and pairs of
proxy runs grown and from scratch for `flmplan grow-vs-scratch` (proxy_pairs.py).

May import: the planner and the runtime's rooms below it, up to runtime.parallel.
"""
