"""The data path: corpora prepared once (Megatron-LM indexed datasets) and read by megatron-core's own
reader, a bilingual BPE corpus beyond 16-bit ids, the layout-independent, resumable and blended order,
an interrupted preparation that resumes, and one sentence for each bad input before anything is written."""

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from flmplan.cli import app
from planner.plan.plan_file import load_plan
from runtime.data.corpus import load_corpus
from runtime.data.indexed import IndexedTokens, codec_for, paths
from runtime.data.loader import Sampler, permute

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
# More entries than 16-bit ids can hold: the corpus must be written as int32.
BPE_VOCAB = 66_000


def bilingual(n: int, seed: int) -> tuple[list[str], list[str]]:
    """English-like and Chinese text with enough distinct words for a BPE of BPE_VOCAB entries."""
    rng = random.Random(seed)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou", "ea")]
    english = [" ".join("".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(150)) + "."
               for _ in range(n)]
    chinese = ["，".join("".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(rng.randint(1, 3)))
                        for _ in range(120)) + "。" for _ in range(n)]
    return english, chinese


def prepare(*args: str) -> dict:
    r = runner.invoke(app, ["data", "prepare", *args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    """A BPE trained on a bilingual corpus (int32 ids), an English JSON-lines and a Chinese text-folder
    corpus prepared with that tokenizer, and the English one as bytes (uint16)."""
    folder = tmp_path_factory.mktemp("corpora")
    english, chinese = bilingual(1500, seed=0)
    with open(folder / "bilingual.jsonl", "w", encoding="utf-8") as f:
        for e, c in zip(english, chinese, strict=True):
            f.write(json.dumps({"text": e, "id": 1}, ensure_ascii=False) + "\n")
            f.write(json.dumps({"text": c, "id": 2}, ensure_ascii=False) + "\n")
    with open(folder / "en.jsonl", "w", encoding="utf-8") as f:
        for e in english[:300]:
            f.write(json.dumps({"body": e}) + "\n")
    (folder / "zh").mkdir()
    for i in range(3):
        (folder / "zh" / f"part{i}.txt").write_text("\n\n".join(chinese[i * 100:(i + 1) * 100]) + "\n", "utf-8")
    man = prepare(str(folder / "bilingual.jsonl"), "--out", str(folder / "bi"), "--train-tokenizer", str(BPE_VOCAB))
    assert man["tokenizer"]["vocab"] == BPE_VOCAB and man["dtype"] == "int32"
    tok = str(folder / "bi.tokenizer.json")
    prepare(str(folder / "en.jsonl"), "--field", "body", "--out", str(folder / "en"), "--tokenizer", tok)
    prepare(str(folder / "zh"), "--out", str(folder / "zh-corpus"), "--tokenizer", tok)
    prepare(str(folder / "en.jsonl"), "--field", "body", "--out", str(folder / "en-bytes"))
    return {"folder": folder, "bi": folder / "bi", "en": folder / "en", "zh": folder / "zh-corpus",
            "en_bytes": folder / "en-bytes", "texts": (english, chinese)}


def test_megatron_core_reads_every_prepared_corpus(corpora):
    """megatron-core's own IndexedDataset reads each corpus: the same documents and tokens as ours."""
    pytest.importorskip("megatron.core")
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    for name, dtype in (("bi", np.int32), ("en", np.int32), ("zh", np.int32), ("en_bytes", np.uint16)):
        prefix = str(corpora[name])
        theirs, ours = IndexedDataset(prefix), IndexedTokens.open(prefix)
        assert ours.dtype == dtype and theirs.index.dtype == dtype, name
        assert len(theirs) == ours.documents > 0
        docs = [theirs[i] for i in range(len(theirs))]
        for i in (0, 1, len(docs) // 2, len(docs) - 1):
            assert np.array_equal(docs[i], ours.document(i)), (name, i)
        # The stream the runtime samples from is the documents one after another.
        assert np.array_equal(np.concatenate(docs), ours.tokens), name
    # The English corpus was 300 JSON lines; the Chinese one 3 files of 100 paragraphs each.
    assert IndexedTokens.open(corpora["en"]).documents == 300
    assert IndexedTokens.open(corpora["zh"]).documents == 300


def test_bilingual_bpe_uses_ids_beyond_16_bits_and_decodes_back(corpora):
    english, chinese = corpora["texts"]
    codec = codec_for(corpora["bi"])
    data = IndexedTokens.open(corpora["bi"])
    assert codec.vocab == BPE_VOCAB and int(data.tokens.max()) >= 1 << 16
    for i, text in ((0, english[0]), (1, chinese[0])):
        ids = data.document(i)
        assert ids[-1] == codec.eod and codec.eod not in ids[:-1]      # one end-of-document token, at the end
        assert codec.decode(ids[:-1].tolist()) == text


def test_feistel_order_is_a_permutation_of_every_size():
    for n in (1, 2, 3, 7, 64, 1000, 4097, 65_537):
        order = permute(np.arange(n), n, key=11)
        assert np.array_equal(np.sort(order), np.arange(n)), n
    a, b = permute(np.arange(1000), 1000, 1), permute(np.arange(1000), 1000, 2)
    assert not np.array_equal(a, b) and not np.array_equal(a, np.arange(1000))


def test_order_is_layout_independent_resumable_and_blended_to_its_weights(corpora):
    corpus = load_corpus([f"0.6:{corpora['en']}", f"0.4:{corpora['zh']}"])
    seq = 32
    whole = Sampler(corpus, seq, seed=3)
    batches = [whole.batch(16, 0, 1) for _ in range(6)]
    x, y = batches[0]
    assert torch.equal(x[:, 1:], y[:, :-1])
    # Data-parallel ranks split the same global batch, whatever their number.
    for dp in (2, 4):
        s = Sampler(corpus, seq, seed=3)
        parts = []
        for _ in range(6):
            state = s.state()
            for rank in range(dp):
                r = Sampler(corpus, seq, seed=3, position=state["data_position"], counts=state["data_counts"])
                parts.append(r.batch(16, rank, dp)[0])
            s.batch(16, 0, 1)
        assert torch.equal(torch.cat(parts), torch.cat([b[0] for b in batches])), dp
    # Resumed from its state after 3 steps, the sampler gives the uninterrupted run's batches.
    s = Sampler(corpus, seq, seed=3)
    for _ in range(3):
        s.batch(16, 0, 1)
    resumed = Sampler(corpus, seq, seed=3, **{"position": s.position, "counts": s.counts})
    assert all(torch.equal(resumed.batch(16, 0, 1)[0], b[0]) for b in batches[3:])
    # Over 10,000 sequences each source's share is within 1 % of its weight (sources re-read in new orders).
    s = Sampler(corpus, seq, seed=3)
    for _ in range(100):
        s.batch(100, 0, 100)
    shares = s.shares()
    assert abs(shares[str(corpora["en"])] - 0.6) < 0.01 and abs(shares[str(corpora["zh"])] - 0.4) < 0.01
    # Another seed, another order.
    assert not torch.equal(Sampler(corpus, seq, seed=4).batch(16, 0, 1)[0], batches[0][0])


def test_an_interrupted_preparation_resumes_to_the_same_files(corpora, tmp_path):
    """Killed (SIGKILL) after its first recorded point, `flmplan data prepare` leaves no final file; the
    same command continues there, and stopped by SIGTERM records its point and says so; then it writes
    what an uninterrupted run writes, byte for byte."""
    tok = str(corpora["bi"]) + ".tokenizer.json"
    source = str(corpora["folder"] / "en.jsonl")
    cmd = [sys.executable, "-m", "flmplan.cli", "data", "prepare", source, "--field", "body", "--tokenizer", tok,
           "--batch-docs", "2", "--out"]
    env = {**os.environ, "FLMPLAN_PREPARE_HOOKS": "tests.hooks:kill_prepare_at", "FLMPLAN_PREPARE_KILL_AT": "64"}
    r = subprocess.run([*cmd, str(tmp_path / "cut")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr
    assert not any(paths(tmp_path / "cut")[k].exists() for k in ("bin", "idx", "manifest"))
    assert json.loads((tmp_path / "cut.progress.json").read_text())["documents"] == 128
    # Resumed, then stopped by SIGTERM: it records where it is, says so in one line and exits 143.
    env = {**os.environ, "FLMPLAN_PREPARE_HOOKS": "tests.hooks:stop_prepare_at", "FLMPLAN_PREPARE_STOP_AT": "64"}
    r = subprocess.run([*cmd, str(tmp_path / "cut")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 143 and "resuming: 128 documents" in r.stderr, r.stderr
    assert "stopped after 256 documents" in " ".join(r.stderr.split()) and "Traceback" not in r.stderr, r.stderr
    assert json.loads((tmp_path / "cut.progress.json").read_text())["documents"] == 256
    r = subprocess.run([*cmd, str(tmp_path / "cut")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "resuming: 256 documents" in r.stderr, r.stderr
    r = subprocess.run([*cmd, str(tmp_path / "whole")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for kind in ("bin", "idx", "tokenizer"):
        assert paths(tmp_path / "cut")[kind].read_bytes() == paths(tmp_path / "whole")[kind].read_bytes(), kind
    assert not (tmp_path / "cut.progress.json").exists() and not list(tmp_path.glob("*.partial"))


def _refused(args: list[str], words: str) -> None:
    r = runner.invoke(app, args)
    lines = [line for line in r.output.strip().splitlines() if line]
    assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output, (args, r.output)
    assert lines[0].startswith("Error:"), r.output


def test_bad_input_is_one_sentence_and_nothing_is_written(corpora, tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "empty.txt").write_text("")
    (folder / "nofield.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    (folder / "latin1.txt").write_bytes("café naïve".encode("latin-1") * 10)
    (folder / "ok.txt").write_text("a few words\n\nand more\n")
    (folder / "bad-tokenizer.json").write_text("{}")
    out = tmp_path / "out" / "c"
    prep = ["data", "prepare"]
    _refused([*prep, str(folder / "empty.txt"), "--out", str(out)], "is empty")
    _refused([*prep, str(folder / "nofield.jsonl"), "--out", str(out)], "has no field 'text' (its fields: body)")
    _refused([*prep, str(folder / "latin1.txt"), "--out", str(out)], "is not UTF-8 text")
    _refused([*prep, str(folder / "ok.txt"), "--out", str(out), "--tokenizer", str(folder / "bad-tokenizer.json")],
             "cannot be read by Hugging Face tokenizers")
    _refused([*prep, str(folder / "missing.txt"), "--out", str(out)], "does not exist")
    _refused([*prep, str(folder / "ok.txt"), "--out", str(corpora["en"])], "exists already")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    # Damaged corpora: a truncated .bin, and an .idx that belongs to another .bin.
    cut = tmp_path / "cut"
    for kind in ("bin", "idx", "manifest"):
        shutil.copy(paths(corpora["en_bytes"])[kind], paths(cut)[kind])
    with open(paths(cut)["bin"], "r+b") as f:
        f.truncate(f.seek(0, 2) - 10)
    swapped = tmp_path / "swapped"
    shutil.copy(paths(corpora["en_bytes"])["bin"], paths(swapped)["bin"])
    shutil.copy(paths(corpora["en"])["idx"], paths(swapped)["idx"])
    shutil.copy(paths(corpora["en"])["manifest"], paths(swapped)["manifest"])
    small = tmp_path / "small"
    prepare(str(folder / "ok.txt"), "--out", str(small))
    plan = str(ROOT / "examples/plans/tiny_one_stage.json")
    run = ["run", plan, "--nproc", "1", "--out", str(tmp_path / "run")]
    _refused([*run, "--data", str(corpora["en"])], f"tokenizer has {BPE_VOCAB:,} entries, more than the plan's "
                                                   "vocabulary of 256")
    _refused([*run, "--data", str(cut)], "is truncated, or the .idx belongs to another file")
    _refused([*run, "--data", str(swapped)], "is truncated, or the .idx belongs to another file")
    _refused([*run, "--data", f"0:{corpora['en_bytes']}"], "a mixture weight must be above 0")
    _refused([*run, f"--data=-0.5:{corpora['en_bytes']}"], "a mixture weight must be above 0")
    _refused([*run, "--data", f"0.5:{corpora['en_bytes']}", "--data", str(small)], "weights to some sources")
    _refused([*run, "--data", f"0.5:{corpora['en']}", "--data", f"0.5:{corpora['en_bytes']}"],
             "different tokenizers")
    _refused([*run, "--data", str(small)], "fewer than one sequence of 64 + 1")
    _refused([*run, "--data", str(folder / "latin1.txt")], "is not UTF-8 text")
    assert not (tmp_path / "run").exists()


def test_simulate_records_the_corpus_and_the_exports_carry_it(corpora, tmp_path):
    from test_export import parse_megatron

    plan_file = tmp_path / "plan.json"
    r = runner.invoke(app, ["simulate", "--budget", "100000", "--schedule", "flm", "--trials", "20", "--out",
                            str(plan_file), "--data", f"0.7:{corpora['en']}", "--data", f"0.3:{corpora['zh']}"])
    assert r.exit_code == 0, r.output
    assert "the plan reads its most-read source" in " ".join(r.output.split())
    plan = load_plan(plan_file)
    assert [s.weight for s in plan.data.sources] == pytest.approx([0.7, 0.3])
    assert plan.data.tokenizer["vocab"] == BPE_VOCAB and plan.data.epochs > 1
    r = runner.invoke(app, ["export", str(plan_file), "--to", "megatron", "--out", str(tmp_path / "m"), "--nearest"])
    assert r.exit_code == 0, r.output
    args = parse_megatron((tmp_path / "m" / "stage1.megatron.args").read_text())
    assert args.data_path == ["0.7", str(corpora["en"]), "0.3", str(corpora["zh"])]
    assert args.tokenizer_type == "NullTokenizer" and int(args.vocab_size) + 1 == plan.stages[0].model.vocab
    r = runner.invoke(app, ["export", str(plan_file), "--to", "slurm", "--out", str(tmp_path / "s")])
    script = (tmp_path / "s" / "flmplan.sbatch").read_text()
    assert r.exit_code == 0 and "DATA:?" not in script and '"${data_args[@]}"' in script
    subprocess.run(["bash", "-n", str(tmp_path / "s" / "flmplan.sbatch")], check=True)
    r = runner.invoke(app, ["export", str(plan_file), "--to", "torchtitan", "--out", str(tmp_path / "t"), "--nearest"])
    assert "torchtitan cannot read the plan's prepared corpus" in (tmp_path / "t" / "flmplan_torchtitan.py").read_text()
    # A plan records files a cluster reads, not text to tokenize.
    _refused(["simulate", "--trials", "20", "--data", str(corpora["folder"] / "en.jsonl")], "takes prepared corpora")


def test_tune_trains_its_proxies_on_the_corpus_tokenizer(corpora, tmp_path):
    r = runner.invoke(app, ["tune", "--widths", "16,32", "--lrs", "0.01", "--parametrization", "mup", "--steps", "5",
                            "--seq", "16", "--batch", "4", "--data", str(corpora["en"]), "--out", str(tmp_path),
                            "--json"])
    assert r.exit_code == 0, r.output
    proxies = [json.loads(p.read_text()) for p in tmp_path.glob("runs/*/proxy.json")]
    assert len(proxies) == 2 and all(p["model"]["vocab"] == BPE_VOCAB for p in proxies)
    assert all(abs(p["final_loss"] - np.log(BPE_VOCAB)) < 1.5 for p in proxies)     # near chance after 5 steps


@pytest.mark.multiprocess
def test_a_tiny_plan_trains_on_a_bilingual_int32_mixture(corpora, tmp_path):
    """`flmplan run --scale tiny` on a 66,000-entry BPE mixture of English and Chinese: the plan takes the
    tokenizer's vocabulary, the loss starts at chance for it and falls, the realised mixture is logged,
    the loader's time is under 1 % of a step, and `flmplan eval`'s model reads text with the run's tokenizer."""
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "flmplan.cli", "run", "examples/plans/tiny_one_stage.json", "--scale",
                        "tiny", "--nproc", "1", "--steps", "12", "--log-every", "1", "--out", str(out),
                        "--data", f"0.7:{corpora['en']}", "--data", f"0.3:{corpora['zh']}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    plan = json.loads((out / "plan.json").read_text())
    assert plan["stages"][0]["model"]["vocab"] == BPE_VOCAB
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in rows if "step_s" in m]
    losses = [m["loss"] for m in steps]
    assert abs(losses[0] - np.log(BPE_VOCAB)) < 0.5 and min(losses[-3:]) < losses[0] - 1.0
    mixture = [m for m in rows if m.get("event") == "data_mixture"][-1]
    assert mixture["shares"][str(corpora["en"])] == pytest.approx(0.7, abs=0.05)
    # The loader's time per step, beside the step's (the first step pays for mapping the files in).
    assert statistics.median(m["data_s"] for m in steps[1:]) < 0.01 * statistics.median(m["step_s"] for m in steps)
    assert (out / "tokenizer.json").is_file() and json.loads((out / "data.json").read_text())["tokenizer"]["vocab"] \
        == BPE_VOCAB
    from runtime.evaluation.harness import FlmplanLM

    ckpt = sorted((out / "checkpoints").iterdir())[-1]
    lm = FlmplanLM(checkpoint=str(ckpt))
    text = corpora["texts"][1][0][:20]
    assert lm.encode(text) == codec_for(corpora["bi"]).encode(text) and lm.codec.vocab == BPE_VOCAB
    (logp, _), = lm.loglikelihood([SimpleNamespace(args=("", text))])
    assert logp < 0


def test_parquet_and_saved_datasets_are_read_by_datasets(tmp_path):
    """The formats `datasets` reads besides text and JSON lines: parquet files and a dataset folder saved
    with save_to_disk (its train split), each row one document."""
    import datasets

    rows = {"text": ["first document", "второй документ", "第三个文件"], "n": [1, 2, 3]}
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "part.parquet"))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "saved"))
    for source in ("part.parquet", "saved"):
        man = prepare(str(tmp_path / source), "--out", str(tmp_path / f"c-{source}"))
        data = IndexedTokens.open(tmp_path / f"c-{source}")
        assert man["documents"] == data.documents == 3
        assert bytes(data.document(1)[:-1].astype(np.uint8)).decode() == "второй документ"


def test_token_width_follows_megatron_cores_rule():
    """uint16 below 65,500 entries, int32 from there: the rule megatron-core's own writer applies, so the
    files are Megatron-LM's bytes for every vocabulary (65,500 to 65,536 entries included)."""
    from megatron.core.datasets.indexed_dataset import DType

    from runtime.data.indexed import token_dtype

    for vocab in (256, 50_257, 65_499, 65_500, 65_536, 100_352):
        assert token_dtype(vocab) == np.dtype(DType.optimal_dtype(vocab)), vocab


def test_a_corpus_megatron_lm_prepared_is_imported_and_gives_the_same_batches(corpora, tmp_path):
    """Megatron-LM's `tools/preprocess_data.py` writes the same PREFIX.bin and PREFIX.idx (byte for byte,
    BENCHMARKS.md) but no manifest: refused by a run, then adopted by `data import`, which checks every id
    against the tokenizer it is given; the adopted corpus gives the flmplan-prepared corpus's batches."""
    megatron = tmp_path / "en_text_document"
    for kind in ("bin", "idx"):
        shutil.copy(paths(corpora["en"])[kind], paths(megatron)[kind])
    plan = str(ROOT / "examples/plans/tiny_one_stage.json")
    _refused(["run", plan, "--nproc", "1", "--out", str(tmp_path / "run"), "--data", str(megatron)],
             "has no en_text_document.manifest.json")
    _refused(["data", "import", str(megatron)], "outside the 256 entries of UTF-8 bytes")
    _refused(["data", "import", str(corpora["folder"])], ".bin with PREFIX.idx")
    assert not paths(megatron)["manifest"].exists() and not paths(megatron)["tokenizer"].exists()
    tokenizer = str(corpora["folder"] / "bi.tokenizer.json")
    r = runner.invoke(app, ["data", "import", str(megatron), "--tokenizer", tokenizer])
    assert r.exit_code == 0, r.output
    ours, theirs = (Sampler(load_corpus([str(p)]), 32, seed=3) for p in (corpora["en"], megatron))
    for _ in range(3):
        assert torch.equal(ours.batch(8, 0, 1)[0], theirs.batch(8, 0, 1)[0])
    assert codec_for(megatron).vocab == BPE_VOCAB
    _refused(["data", "import", str(megatron)], "has a manifest already")


def test_many_corpora_by_folder_glob_or_mixture_file(corpora, tmp_path):
    """A folder of prepared corpora (at any depth) or a glob of them is every corpus in it, each weighing
    its tokens; a mixture file weighs them as it says (its paths relative to it); a folder of corpora
    is not read as text, and a weight on it is refused."""
    folder = tmp_path / "mix"
    (folder / "zh").mkdir(parents=True)
    for name, src in (("en", corpora["en"]), ("zh/zh", corpora["zh"])):
        for kind in ("bin", "idx", "manifest", "tokenizer"):
            shutil.copy(paths(src)[kind], paths(folder / name)[kind])
    by_folder = load_corpus([str(folder)])
    names = [s.name for s in by_folder.sources]
    assert names == [str(folder / "en"), str(folder / "zh" / "zh")]
    tokens = [s.data.n_tokens for s in by_folder.sources]
    assert [s.weight for s in by_folder.sources] == pytest.approx([t / sum(tokens) for t in tokens])
    assert [s.name for s in load_corpus([str(folder / "*")]).sources] == names[:1]
    (folder / "mix.json").write_text(json.dumps({"en": 0.7, "zh/zh": 0.3}))
    assert [s.weight for s in load_corpus([str(folder / "mix.json")]).sources] == pytest.approx([0.7, 0.3])
    plan = str(ROOT / "examples/plans/tiny_one_stage.json")
    _refused(["run", plan, "--nproc", "1", "--out", str(tmp_path / "run"), "--data", f"0.5:{folder}"],
             "a folder or glob of corpora takes no weight")
    (folder / "bad.json").write_text(json.dumps({"nothing": 1.0}))
    _refused(["run", plan, "--nproc", "1", "--out", str(tmp_path / "run"), "--data", str(folder / "bad.json")],
             "names nothing, which is not a prepared corpus")


def test_batches_are_bounded_by_text_and_the_tokenizer_trains_on_a_recorded_sample(corpora, tmp_path, monkeypatch):
    """An encode call gets `--batch-docs` documents or `batch_chars()` of text, whichever comes first, and a
    longer document alone; --train-tokenizer trains on every k-th document, k from --tokenizer-sample,
    and the manifest records it."""
    import runtime.data.inputs as prep

    text = tmp_path / "docs.txt"
    sizes = [300, 300, 300, 2500, 100, 100]
    text.write_text("\n\n".join("x" * n for n in sizes) + "\n")
    inputs = prep.find_inputs([text])
    monkeypatch.setattr(prep, "batch_chars", lambda: 1000)
    assert [[len(t) for t in b] for b in prep.batches(inputs, "text", "paragraph", 512)] == \
        [[300, 300, 300, 2500], [100, 101]]          # the last paragraph keeps its newline
    assert [len(t) for t in prep.documents(inputs, "text", "paragraph", every=2)] == [300, 300, 100]
    man = json.loads(paths(corpora["bi"])["manifest"].read_text())
    assert man["tokenizer_sample"] == {"bytes": 128 << 20, "every_nth_document": 1}


def test_the_blend_is_megatron_lms_to_the_sample():
    """Megatron-LM's own blend (megatron-core's compiled helpers, build_blending_indices) and ours, batch by
    batch across batch edges: the same source and sample number for every sample, at 2 to 1,000 sources,
    equal weights (all ties) and one heavy source among many light ones."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets import helpers_cpp

    from runtime.data.loader import blend

    rng = np.random.default_rng(0)
    cases = [rng.random(2), rng.random(9), rng.random(1000), np.ones(1000), np.array([90.0] + [1.0] * 99)]
    for weights in cases:
        w = weights / weights.sum()
        n = 6_000
        source, number = np.zeros(n, dtype=np.int16), np.zeros(n, dtype=np.int64)
        helpers_cpp.build_blending_indices(source, number, w, len(w), n, False)
        counts, got_source, got_number = np.zeros(len(w), dtype=np.int64), [], []
        for position in range(0, n, 1_000):
            s, k, counts = blend(w, counts, position, min(1_000, n - position))
            got_source.append(s)
            got_number.append(k)
        assert np.array_equal(np.concatenate(got_source), source) and np.array_equal(np.concatenate(got_number), number)
        assert np.array_equal(counts, np.bincount(source, minlength=len(w)))


def test_one_worker_writes_what_every_core_writes(corpora, tmp_path):
    """`data prepare --workers 1` (one tokenizer thread, the reading on its own thread) writes the same bytes
    as the fixture's run on every core. A process of its own: the tokenizer's pool is sized once."""
    tok = str(corpora["bi"]) + ".tokenizer.json"
    out = tmp_path / "one"
    r = subprocess.run([sys.executable, "-m", "flmplan.cli", "data", "prepare", str(corpora["folder"] / "zh"),
                        "--tokenizer", tok, "--workers", "1", "--batch-docs", "7", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for kind in ("bin", "idx"):
        assert paths(out)[kind].read_bytes() == paths(corpora["zh"])[kind].read_bytes(), kind


def test_per_input_shards_split_between_machines_give_one_corpus(corpora, tmp_path):
    """`--per-input --share K/N`: two machines' shares of a folder of files write what one machine writes,
    shard for shard; the same command again passes over finished shards; corpus.json is a mixture file
    `--data` reads (each shard weighing its tokens); a share without --per-input, a bad share and a shared
    tokenizer training are refused in one sentence."""
    tok = str(corpora["bi"]) + ".tokenizer.json"
    zh = str(corpora["folder"] / "zh")
    one, two = tmp_path / "one", tmp_path / "two"
    r = CliRunner().invoke(app, ["data", "prepare", zh, "--per-input", "--tokenizer", tok, "--out", str(one), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["shards"] == 3
    for share in ("0/2", "1/2", "1/2"):
        r = CliRunner().invoke(app, ["data", "prepare", zh, "--per-input", "--share", share, "--tokenizer", tok,
                                     "--out", str(two), "--json"])
        assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    assert result["prepared"] == [] and result["already_done"] == ["shard-00001"]
    for i in range(3):
        for kind in ("bin", "idx"):
            assert paths(one / f"shard-{i:05d}")[kind].read_bytes() == paths(two / f"shard-{i:05d}")[kind].read_bytes()
    mixture = json.loads((two / "corpus.json").read_text())
    corpus, folder = load_corpus([str(two / "corpus.json")]), load_corpus([str(two)])
    tokens = [s.data.n_tokens for s in corpus.sources]
    assert tokens == list(mixture.values()) == [s.data.n_tokens for s in folder.sources]
    assert [s.weight for s in corpus.sources] == pytest.approx([t / sum(tokens) for t in tokens])
    _refused(["data", "prepare", zh, "--share", "0/2", "--out", str(tmp_path / "x")], "add --per-input")
    _refused(["data", "prepare", zh, "--per-input", "--share", "2/2", "--out", str(tmp_path / "x")], "between 0 and N")
    _refused(["data", "prepare", zh, "--per-input", "--share", "0/2", "--train-tokenizer", "300", "--out",
              str(tmp_path / "x")], "Shards share one tokenizer")


def test_a_long_document_is_encoded_in_pieces_to_the_same_ids(corpora, tmp_path, monkeypatch):
    """A document past LONG_TEXT_CHARS is cut at pre-token boundaries and encoded piece by piece, to the
    ids it has whole: with the BPE prepare trains, one with GPT-2's pre-tokenizer that knows merges of
    newline runs (which a piece cut after whitespace would wrongly use), and one built as Llama 3's
    (cl100k's split regex, then bytes); a tokenizer with a normalizer is encoded whole."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    import runtime.data.indexed as ix

    english, chinese = corpora["texts"]
    doc = "".join(f"{e} {i} and more\n\n\nnext ### {i}\n   (x)\r\n\t'{i}'s 1234567 !!\n\nso  {c}\n"
                  for i, (e, c) in enumerate(zip(english[:300], chinese[:300], strict=True)))

    def trained(pre, name: str) -> Path:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre
        tok.train_from_iterator([doc[:20_000], *["x\n\n\n", "y\n\n"] * 200], trainers.BpeTrainer(
            vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False))
        tok.save(str(tmp_path / name))
        return tmp_path / name

    gpt2 = trained(pre_tokenizers.ByteLevel(add_prefix_space=False), "gpt2.json")
    llama = trained(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(ix.CL100K_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), "llama.json")
    normalized = Tokenizer.from_file(str(llama))
    normalized.normalizer = normalizers.NFKC()
    normalized.save(str(tmp_path / "nfkc.json"))
    assert Tokenizer.from_file(str(gpt2)).token_to_id("ĊĊ") is not None
    for file, local in ((str(corpora["bi"]) + ".tokenizer.json", True), (gpt2, True), (llama, True),
                        (tmp_path / "nfkc.json", False)):
        codec = ix.HFCodec(file, "<|endoftext|>")
        whole = codec.tok.encode(doc, add_special_tokens=False).ids
        for size in (3_000, 157):           # many cuts, some next to whitespace runs
            monkeypatch.setattr(ix, "LONG_TEXT_CHARS", size)
            assert codec.cuts_locally == local and len(list(codec.pieces(doc))) > 20
            assert np.asarray(codec.encode_batch(["a short one", doc])[1]).tolist() == whole, (file, size)


def test_the_tokenizer_trainer_gets_a_long_document_in_line_parts(monkeypatch):
    """--train-tokenizer hands the trainer a long document in parts cut at line ends (a 50 MB document
    whole took its peak from 1.2 to 4.6 GB): the parts are the document, each within the bound."""
    import runtime.data.prepare as prep

    monkeypatch.setattr(prep, "TRAIN_PART_CHARS", 100)
    text = "".join(f"line {i} " * (i % 7) + "\n" for i in range(500)) + "x" * 350
    parts = list(prep.lines_of(text))
    assert "".join(parts) == text and all(len(p) <= 100 for p in parts) and len(parts) > 10
    assert all(p.endswith("\n") for p in parts[:-4])
