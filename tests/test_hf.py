"""`flmplan export RUN_DIR --to hf`: a trained run leaves as a Hugging Face model folder that
transformers' own AutoModelForCausalLM loads offline and that computes the runtime's logits, with the
run's tokenizer; lm-eval's `hf` model scores it as `flmplan eval` does; what GPT-NeoX cannot compute
is refused, every feature at once, before anything is written."""

import json

import pytest
import torch
from typer.testing import CliRunner

from flmplan.cli import app

transformers = pytest.importorskip("transformers")

# fp32 logits of the same function computed by two implementations (fused QKV, permuted rotary, SDPA
# against eager): rounding differs at ~1e-6; the bound is 1e-4.
LOGIT_TOLERANCE = 1e-4


def trained_run(root, process_group, steps: int = 40, **model):
    """A one-stage run folder whose final checkpoint is a tiny decoder trained `steps` AdamW steps on
    the IQ suite's train split as bytes (trained, so that its logits are far from uniform)."""
    from runtime import checkpoint
    from runtime.evaluation.iq_tasks import training_text
    from runtime.model.decoder import Decoder, DecoderConfig, causal_lm_loss

    torch.manual_seed(0)
    fields = dict(layers=2, hidden=32, heads=4, ffn=64, vocab=256, seq=64, **model)
    m = Decoder(DecoderConfig(**fields))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    data = torch.tensor(list(training_text(40).encode()))
    for _ in range(steps):
        rows = torch.randint(0, len(data) - fields["seq"] - 1, (8,))
        x = torch.stack([data[i:i + fields["seq"] + 1] for i in rows])
        loss = causal_lm_loss(m(x[:, :-1]), x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    checkpoint.save(root / "checkpoints", f"stage1-step{steps:07d}", [m], [opt],
                    {"stage": 1, "stage_numbering": 1, "step": steps, "stage_done": True, "global_step": steps,
                     "data_position": steps * 8, "model": fields})
    return root, m


def hf_logits(folder, batch):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True,
                                                              dtype=torch.float32).eval()
    with torch.no_grad():
        return model(batch).logits


@pytest.fixture(scope="module")
def exported(tmp_path_factory, process_group):
    root = tmp_path_factory.mktemp("hf")
    run, model = trained_run(root / "run", process_group)
    r = CliRunner().invoke(app, ["export", str(run), "--to", "hf", "--out", str(root / "hf")])
    assert r.exit_code == 0, r.output
    return run, model.eval(), root / "hf"


def test_the_export_loads_in_transformers_and_computes_the_runtimes_logits(exported):
    _, model, folder = exported
    record = json.loads((folder / "flmplan-hf.json").read_text())
    assert record["architecture"] == "GPTNeoXForCausalLM" and record["tied_embeddings"]
    assert record["check"]["verified"] and record["check"]["max_abs_logit"] < LOGIT_TOLERANCE
    tok = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    text = "Rule: replace ö with 7.\n"
    ids = tok(text)["input_ids"]
    assert ids == [0, *text.encode()] and tok.decode(ids[1:]) == text     # EOD first, then bytes, as trained
    batch = torch.tensor([ids, ids[::-1]])
    with torch.no_grad():
        ours = model(batch)
    assert (hf_logits(folder, batch) - ours).abs().max() < LOGIT_TOLERANCE
    # Interleaved rotary is not half rotary: without the q/k permutation the logits would differ.
    from runtime.export.hf import rotary_halves

    assert not torch.equal(rotary_halves(8), torch.arange(8))


def test_mup_and_untied_output_fold_into_gpt_neox(tmp_path, process_group):
    """µP's attention scale and readout multiplier have no GPT-NeoX field: they are folded into q and
    into an output matrix of its own, and the logits still match."""
    from runtime.data.indexed import ByteCodec
    from runtime.export.hf import hf_tokenizer, verify_with_transformers, write_folder
    from runtime.model.decoder import Decoder, DecoderConfig

    torch.manual_seed(1)
    for fields in (dict(mup=True, mup_base_width=8, mup_output_mult=2.0, mup_attn_mult=1.5),
                   dict(tied_embeddings=False, rope_theta=500.0)):
        model = Decoder(DecoderConfig(layers=2, hidden=32, heads=4, ffn=64, vocab=256, seq=32, **fields)).eval()
        tok, eod_token = hf_tokenizer(ByteCodec())
        tied = write_folder(model, tok, eod_token, 0, tmp_path / "m")
        batch = torch.randint(0, 256, (2, 32))
        with torch.no_grad():
            check = verify_with_transformers(tmp_path / "m", batch, model(batch))
        assert not tied and check["max_abs_logit"] < LOGIT_TOLERANCE, (fields, check)


def test_lm_eval_scores_the_export_as_flmplan_eval_does(exported, tmp_path):
    """The same IQ items through lm-eval's `hf` model on the export and `flmplan eval` on the run: the
    same function on the same tokens, so the same accuracy (within noise: lm-eval moves a context's
    trailing space into the continuation)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    run, _, folder = exported
    r = CliRunner().invoke(app, ["eval", str(run), "--limit", "8", "--items", "8", "--out", str(tmp_path / "e"),
                                 "--json"])
    assert r.exit_code == 0, r.output
    flm = json.loads((tmp_path / "e" / "stage1-lm-eval-results.json").read_text())["results"]
    manager = TaskManager(include_path=str(tmp_path / "e" / "tasks"), include_defaults=False)
    hf = simple_evaluate(model=HFLM(pretrained=str(folder), dtype="float32", device="cpu"), tasks=["iq"],
                         task_manager=manager, limit=8, bootstrap_iters=0, verbosity="ERROR")["results"]
    from runtime.evaluation.iq_tasks import TASKS

    for name in TASKS:
        task = f"iq_{name}"
        key = "acc,none" if "acc,none" in flm[task] else "exact_match,none"
        assert abs(hf[task][key] - flm[task][key]) <= 1 / 8 + 1e-9, (task, hf[task], flm[task])


def test_refusals_name_every_missing_feature_and_write_nothing(tmp_path, process_group):
    run, _ = trained_run(tmp_path / "gqa", process_group, steps=1, position="xpos", activation="swiglu",
                         kv_heads=2)
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    (tmp_path / "file").write_text("x")
    for target, out, words in ((run, tmp_path / "o1", "xPos positions (model.position: xpos"),
                               (run, tmp_path / "o2", "grouped-query attention (2 key/value heads for 4)"),
                               (run, tmp_path / "o3", "the SwiGLU MLP"),
                               (tmp_path / "empty", tmp_path / "o4", "has no usable checkpoint"),
                               (tmp_path / "missing", tmp_path / "o5", "does not exist"),
                               (run, tmp_path / "file", "--out")):
        r = CliRunner().invoke(app, ["export", str(target), "--to", "hf", "--out", str(out)])
        assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output, r.output
        assert not out.exists() or out.is_file()
    assert r.output.count("\n") <= 3


def test_nearest_exports_rotary_for_xpos_and_measures_the_difference(tmp_path, process_group):
    run, _ = trained_run(tmp_path / "xpos", process_group, steps=20, position="xpos")
    r = CliRunner().invoke(app, ["export", str(run), "--to", "hf", "--nearest", "--out", str(tmp_path / "hf")])
    assert r.exit_code == 0, r.output
    record = json.loads((tmp_path / "hf" / "flmplan-hf.json").read_text())
    diff, = record["differences"]
    # The export is the rotary model exactly; it differs from the xPos run by a measured amount, far
    # above the rounding between the two implementations (xPos's decay over 64 positions is mild).
    assert record["check"]["max_abs_logit"] < LOGIT_TOLERANCE
    assert diff["max_abs_logit"] > 10 * record["check"]["max_abs_logit"] and diff["argmax_agreement"] <= 1
