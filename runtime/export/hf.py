"""A trained run in Hugging Face's format: `model.safetensors`, `config.json` and the tokenizer, for
transformers' GPT-NeoX (`GPTNeoXForCausalLM`), the architecture that computes the runtime's decoder:
pre-LayerNorm blocks with biases, attention then MLP in sequence (`use_parallel_residual: false`),
rotary on the whole head, a tanh-GeLU MLP, tied or untied output embeddings.

What needs mapping, not copying:
- Rotary pairs. The runtime rotates interleaved pairs (x[2i], x[2i+1]) (RoFormer, GPT-J); GPT-NeoX
  rotates halves (x[i], x[i + d/2]) at the same frequencies. Attention scores are unchanged when q and
  k permute their head dimensions alike, so each head's q and k rows are permuted (evens, then odds).
- µP. The attention scale attn_mult/d is folded into q (GPT-NeoX scales by 1/√d), the readout's
  output_mult/width_mult into an output matrix of its own (untying a tied embedding).
- GPT-NeoX's fused query_key_value holds, per head, that head's q, k and v rows in turn.

What GPT-NeoX cannot compute is refused, every such feature at once: xPos (with `nearest`, rotary
alone, with the logit difference measured and written), SwiGLU, grouped-query attention, and an
attention width other than the hidden size. FreeLM's teacher head is not part of a causal LM and is
left out (said in `flmplan-hf.json`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from planner.errors import FlmplanError

ARCHITECTURE = "GPTNeoXForCausalLM"
RECORD = "flmplan-hf.json"
# How many sequences of the fixed batch the export measures its logits on.
CHECK_SEQUENCES, CHECK_TOKENS = 4, 64


def missing_features(cfg) -> list[str]:
    """Every feature of the model that GPT-NeoX cannot compute, named with its plan field."""
    gaps = []
    if cfg.position == "xpos":
        gaps.append("xPos positions (model.position: xpos; --nearest exports rotary alone)")
    if cfg.activation == "swiglu":
        gaps.append("the SwiGLU MLP (model.activation: swiglu)")
    if cfg.n_kv_heads != cfg.heads:
        gaps.append(f"grouped-query attention ({cfg.n_kv_heads} key/value heads for {cfg.heads})")
    if cfg.heads * cfg.head_dim != cfg.hidden:
        gaps.append(f"an attention width of {cfg.heads * cfg.head_dim} beside a hidden size of {cfg.hidden}")
    return gaps


def choose_checkpoint(target: Path) -> tuple[Path, dict, dict | None]:
    """(checkpoint, its manifest, the run's stage parametrization or None): the newest good checkpoint
    of the last stage the run reached, or the checkpoint given; refused inside a growth's mask ramp,
    where the model computes with masks GPT-NeoX does not have."""
    from runtime.checkpoint import read_manifest, stage_checkpoints
    from runtime.growth.msg import GrowthState

    stages, plan_path = stage_checkpoints(target)
    stage, path = stages[-1]
    manifest, _ = read_manifest(path)
    growth = manifest.get("growth")
    if growth and GrowthState(**growth).value(manifest["step"]) < 1.0:
        raise FlmplanError(f"Checkpoint {path} is inside stage {stage}'s growth ramp (step {manifest['step']} of "
                           f"{growth['grow_steps']}), where MSG's masks still scale the new units; export a "
                           "checkpoint after the ramp.")
    par = None
    if plan_path is not None:
        from planner.plan.plan_file import load_plan

        par = load_plan(plan_path).stages[stage - 1].parametrization.model_dump()
    return path, manifest, par


def check_export(target: Path, nearest: bool):
    """Everything that can refuse, before anything is written: (checkpoint, manifest, parametrization,
    config)."""
    from planner.plan.plan_file import PlanParametrization
    from runtime.checkpoint import saved_shapes
    from runtime.model.decoder import DecoderConfig

    path, manifest, par = choose_checkpoint(target)
    fields = PlanParametrization(**(par or {})).config_fields()
    cfg = DecoderConfig(**manifest["model"], **fields,
                        teacher_head="model.teacher.weight" in saved_shapes(path))
    gaps = missing_features(cfg)
    if nearest:
        gaps = [g for g in gaps if not g.startswith("xPos")]
    if gaps:
        raise FlmplanError(f"GPT-NeoX, the Hugging Face architecture nearest to this model, lacks {'; '.join(gaps)}; "
                           "transformers has no architecture that computes it, so it is not exported.")
    return path, manifest, par, cfg


def rotary_halves(head_dim: int) -> torch.Tensor:
    """The row order that turns interleaved rotary pairs (2i, 2i+1) into halves (i, i + d/2)."""
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


def neox_state_dict(model) -> tuple[dict[str, torch.Tensor], bool]:
    """(GPT-NeoX's tensors, whether the output embedding stays tied) from a whole Decoder."""
    from runtime.model import mup

    cfg = model.cfg
    d, heads = cfg.head_dim, cfg.heads
    order = rotary_halves(d)
    # GPT-NeoX multiplies q·kᵀ by 1/√d; the runtime by attention_scale (µP: attn_mult/d).
    q_scale = mup.attention_scale(cfg) * math.sqrt(d)

    def per_head(t: torch.Tensor, rotate: bool, scale: float = 1.0) -> torch.Tensor:
        """A projection's rows (or bias) per head, q and k in GPT-NeoX's rotary order."""
        t = t.reshape(heads, d, *t.shape[1:])
        return (t[:, order] if rotate else t) * scale

    sd: dict[str, torch.Tensor] = {"gpt_neox.embed_in.weight": model.embed.weight}
    for i, block in model.blocks.items():
        p = f"gpt_neox.layers.{i}."
        a = block.attn
        for kind in ("weight", "bias"):
            q, k, v = (getattr(m, kind) for m in (a.q, a.k, a.v))
            fused = torch.cat([per_head(q, True, q_scale), per_head(k, True), per_head(v, False)], dim=1)
            sd[p + f"attention.query_key_value.{kind}"] = fused.reshape(3 * heads * d, *q.shape[1:])
            sd[p + f"attention.dense.{kind}"] = getattr(a.o, kind)
            sd[p + f"input_layernorm.{kind}"] = getattr(block.ln1, kind)
            sd[p + f"post_attention_layernorm.{kind}"] = getattr(block.ln2, kind)
            sd[p + f"mlp.dense_h_to_4h.{kind}"] = getattr(block.mlp.up, kind)
            sd[p + f"mlp.dense_4h_to_h.{kind}"] = getattr(block.mlp.down, kind)
    sd["gpt_neox.final_layer_norm.weight"] = model.ln_f.weight
    sd["gpt_neox.final_layer_norm.bias"] = model.ln_f.bias
    readout = mup.readout_mult(cfg)
    tied = model.head is None and readout == 1.0
    if not tied:
        # GPT-NeoX's name for an output matrix of its own (transformers 5 renames it lm_head on load).
        w = model.embed.weight if model.head is None else model.head.weight
        sd["embed_out.weight"] = w * readout
    return {k: v.detach().float().contiguous().clone() for k, v in sd.items()}, tied


def neox_config(cfg, tied: bool, eod: int) -> dict:
    """config.json for transformers' GPT-NeoX (the keys its configuration has read since 4.x)."""
    return {"architectures": [ARCHITECTURE], "model_type": "gpt_neox", "vocab_size": cfg.vocab,
            "hidden_size": cfg.hidden, "num_hidden_layers": cfg.layers, "num_attention_heads": cfg.heads,
            "intermediate_size": cfg.ffn, "hidden_act": "gelu_pytorch_tanh", "rotary_pct": 1.0,
            "rotary_emb_base": cfg.rope_theta, "max_position_embeddings": cfg.seq, "layer_norm_eps": cfg.ln_eps,
            "use_parallel_residual": False, "attention_bias": True, "tie_word_embeddings": tied,
            "attention_dropout": 0.0, "hidden_dropout": 0.0, "initializer_range": cfg.init_std,
            "bos_token_id": eod, "eos_token_id": eod, "use_cache": True, "torch_dtype": "float32"}


def hf_tokenizer(codec):
    """The run's tokenizer as a `tokenizers` Tokenizer that puts the end-of-document token first, as
    every document followed one in training. Bytes become a byte-level BPE without merges: id = byte."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    if codec.kind == "bytes":
        table = pre_tokenizers.ByteLevel.alphabet()
        # ByteLevel's printable stand-in for each byte, in byte order (GPT-2's bytes_to_unicode).
        stand_in = _byte_stand_ins()
        assert set(stand_in) == set(table)
        tok = Tokenizer(models.BPE(vocab={c: b for b, c in enumerate(stand_in)}, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        eod_token = stand_in[codec.eod]
    else:
        tok = Tokenizer.from_file(str(codec.file))
        eod_token = codec.eod_token
    first = processors.TemplateProcessing(single=f"{eod_token} $A", pair=f"{eod_token} $A {eod_token} $B:1",
                                          special_tokens=[(eod_token, codec.eod)])
    if codec.kind == "bytes" or tok.post_processor is None:
        tok.post_processor = first
    else:
        tok.post_processor = processors.Sequence([tok.post_processor, first])
    return tok, eod_token


def _byte_stand_ins() -> list[str]:
    """GPT-2's reversible byte → printable character map, as ByteLevel uses it (Radford et al. 2019)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def fixed_batch(codec, seq: int) -> torch.Tensor:
    """A fixed batch of real text (the IQ suite's train split) in the run's tokens, EOD first."""
    from runtime.evaluation.iq_tasks import training_text

    n = min(seq, CHECK_TOKENS)
    ids = codec.encode(training_text(40, seed=0))
    rows = [[codec.eod, *ids[i * n:(i + 1) * n - 1]] for i in range(CHECK_SEQUENCES)]
    return torch.tensor(rows, dtype=torch.long)


def export_hf(target: Path, out: Path, nearest: bool = False, log=print) -> dict:
    """Write the run's model as a Hugging Face model folder; returns what `flmplan-hf.json` records."""
    import dataclasses

    from runtime.checkpoint import load_whole
    from runtime.data.corpus import run_codec
    from runtime.model.decoder import Decoder

    path, manifest, par, cfg = check_export(target, nearest)
    run_dir = path.parent.parent
    codec = run_codec(run_dir)
    try:
        tok, eod_token = hf_tokenizer(codec)
    except ImportError:
        raise FlmplanError("The Hugging Face export writes the tokenizer with Hugging Face tokenizers: "
                           "pip install -e '.[hf]'.") from None
    model = load_whole(path, par, verified=True)        # choose_checkpoint checked its files
    record = {"architecture": ARCHITECTURE, "checkpoint": str(path), "stage": manifest["stage"],
              "step": manifest["step"], "stage_done": manifest.get("stage_done", False),
              "tokens": manifest.get("tokens"), "dtype": "float32",
              "tokenizer": codec.describe(), "left_out": [], "differences": []}
    if cfg.teacher_head:
        record["left_out"].append("FreeLM's teacher head (model.teacher): a true/false classifier, not the LM")
    batch = fixed_batch(codec, cfg.seq)
    with torch.no_grad():
        ours = model(batch).float()
        if cfg.position == "xpos":
            # What the export computes: the same weights with rotary alone.
            rotary = Decoder(dataclasses.replace(cfg, position="rotary")).eval()
            rotary.load_state_dict(model.state_dict())
            theirs = rotary(batch).float()
            diff = _difference(ours, theirs)
            record["differences"].append({"feature": "xPos replaced by rotary (--nearest)", **diff})
            log(f"xPos → rotary: max |Δlogit| {diff['max_abs_logit']:.3g}, next-token agreement "
                f"{diff['argmax_agreement']:.1%} on {CHECK_SEQUENCES} × {batch.shape[1]} tokens")
    record["tied_embeddings"] = write_folder(model, tok, eod_token, codec.eod, out)
    record["check"] = verify_with_transformers(out, batch, ours if cfg.position != "xpos" else theirs)
    (out / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return record


def write_folder(model, tok, eod_token: str, eod: int, out: Path) -> bool:
    """model.safetensors, config.json and the tokenizer's two files; returns whether the output
    embedding stays tied."""
    from safetensors.torch import save_file

    tensors, tied = neox_state_dict(model)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(neox_config(model.cfg, tied, eod), indent=1) + "\n")
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": eod_token, "eos_token": eod_token,
         "model_max_length": model.cfg.seq, "clean_up_tokenization_spaces": False}, indent=1) + "\n")
    return tied


def _difference(a: torch.Tensor, b: torch.Tensor) -> dict:
    return {"max_abs_logit": float((a - b).abs().max()),
            "max_abs_logprob": float((a.log_softmax(-1) - b.log_softmax(-1)).abs().max()),
            "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean())}


def verify_with_transformers(folder: Path, batch: torch.Tensor, expected: torch.Tensor) -> dict:
    """Load the folder with transformers' AutoModelForCausalLM, offline, and compare its logits on the
    fixed batch with the runtime's; {"verified": False, "why": ...} where transformers is not installed."""
    try:
        import transformers
        from transformers import AutoModelForCausalLM
    except ImportError:
        return {"verified": False, "why": "transformers is not installed (pip install -e '.[hf]')"}
    transformers.utils.logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32).eval()
    with torch.no_grad():
        got = model(batch).logits.float()
    return {"verified": True, "transformers": transformers.__version__, "sequences": batch.shape[0],
            "tokens": batch.shape[1], **_difference(expected, got)}
