"""The IQ suite (runtime/evaluation): generated items answerable from their prompts, disjoint train and eval
pools, and the lm-eval integration — an oracle scores 100 %, a uniform-random model chance, and
`flmplan eval` scores a flmplan checkpoint or refuses bad input in one sentence."""

import json
import random
import re

import pytest
import torch
from typer.testing import CliRunner

from flmplan.cli import app
from runtime.evaluation.iq_tasks import TASKS, generate, propositions, training_text

lm_eval = pytest.importorskip("lm_eval")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_answer_follows_from_the_prompt_alone(name):
    t = TASKS[name]
    for split in ("train", "eval"):
        items = generate(t, split, 150, seed=7, **({"keys": 9} if name == "multi_key_retrieval" else {}))
        assert items == generate(t, split, 150, seed=7, **({"keys": 9} if name == "multi_key_retrieval" else {}))
        for i in items:
            assert t.solve(i["prompt"]) == i["answer"], i
            if t.kind == "multiple_choice":
                assert i["answer"] in i["choices"] and len(set(i["choices"])) == len(i["choices"]) > 1
            if t.family == "anti_interference":
                assert i["distractors"] >= 1
        if name == "multi_key_retrieval":
            assert all(len(i["choices"]) == 9 for i in items)     # the difficulty knob: 9 keys, 8 distractors


def test_train_and_eval_share_no_symbol_mapping_key_name_or_string():
    def used(split: str) -> dict[str, set]:
        out = {"symbols": set(), "keys": set(), "names": set(), "strings": set()}
        for name in ("symbolic_category", "symbolic_parity"):
            for i in generate(TASKS[name], split, 200):
                out["symbols"] |= {c.strip() for c in i["choices"]}
        for i in generate(TASKS["multi_key_retrieval"], split, 200):
            out["keys"] |= {line.split(":")[0] for line in i["prompt"].split("\n")[:-1]}
        for name in ("single_supporting_fact", "two_supporting_facts"):
            for i in generate(TASKS[name], split, 200):
                out["names"] |= set(re.findall(r"([A-Z][a-z]+) (?:went|picked)", i["prompt"]))
        for name in ("rule_count", "rule_replace", "pattern_mining"):
            for i in generate(TASKS[name], split, 200):
                query = "\n".join(i["prompt"].split("\n")[-2:])        # the query's string, on its last lines
                out["strings"].add(re.findall(r"\b[a-p]{4,}\b", query)[-1])
        return out

    train, held = used("train"), used("eval")
    for kind in train:
        assert train[kind] and held[kind] and not train[kind] & held[kind], kind


def test_the_train_split_as_text_and_as_freelm_propositions():
    from runtime.objectives.freelm import Proposition

    text = training_text(5)
    assert text.count("\n\n") == 5 * len(TASKS) and "Answer:" in text
    props = propositions(20)
    assert {p["task"] for p in props} == {n for n, t in TASKS.items() if t.kind == "multiple_choice"}
    for p in props:
        item = Proposition(p["text"], p["proposition"], p["label"])
        assert (" " + item.proposition == TASKS[p["task"]].solve(item.text)) == item.label


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    from lm_eval.tasks import TaskManager

    from runtime.evaluation.harness import write_tasks

    folder = tmp_path_factory.mktemp("iq")
    names = write_tasks(folder, n=30, seed=3)
    answers = {}
    for t in TASKS:
        for line in (folder / f"{t}.jsonl").read_text().splitlines():
            i = json.loads(line)
            answers[i["prompt"]] = i
    return names, TaskManager(include_path=str(folder), include_defaults=False), answers


def scores(model, tasks) -> dict[str, float]:
    names, manager, _ = tasks
    res = lm_eval.simple_evaluate(model=model, tasks=names, task_manager=manager, log_samples=False,
                                  bootstrap_iters=0, verbosity="ERROR")
    return {k.removeprefix("iq_"): v.get("acc,none", v.get("exact_match,none")) for k, v in res["results"].items()
            if k.startswith("iq_")}


def test_lm_eval_scores_an_oracle_at_100_percent_and_a_random_model_at_chance(tasks):
    from lm_eval.api.model import LM

    from runtime.evaluation.evaluate import wilson

    answers = tasks[2]

    class Oracle(LM):
        """Knows every item's answer (scripted): the configs, the targets and the metrics must agree."""

        def loglikelihood(self, requests):
            return [(0.0, True) if answers[c]["answer"] == x else (-100.0, False)
                    for c, x in (r.args for r in requests)]

        def loglikelihood_rolling(self, requests):
            return [0.0] * len(requests)

        def generate_until(self, requests):
            return [answers[c]["answer"] for c, _ in (r.args for r in requests)]

    class Uniform(LM):
        def __init__(self):
            super().__init__()
            self.rng = random.Random(0)

        def loglikelihood(self, requests):
            return [(self.rng.random(), False) for _ in requests]

        def loglikelihood_rolling(self, requests):
            return [0.0] * len(requests)

        def generate_until(self, requests):
            return ["" for _ in requests]

    assert scores(Oracle(), tasks) == {name: 1.0 for name in TASKS}
    counts = [i for i in answers.values() if i["task"] == "rule_count"]
    assert 0.1 < TASKS["rule_count"].chance(counts) < 0.45   # counts spread over 0..4: no constant answer passes
    got = scores(Uniform(), tasks)
    for name, t in TASKS.items():
        items = [i for i in answers.values() if i["task"] == name]
        chance = t.chance(items)
        if t.kind == "generate":
            assert got[name] == 0.0          # an empty answer matches nothing
        else:
            lo, hi = wilson(got[name] * len(items), len(items))
            assert lo <= chance <= hi, (name, got[name], chance)


def run_folder(tmp_path, process_group):
    """A one-stage run folder holding an untrained tiny model's final checkpoint (as `flmplan run` saves it)."""
    from runtime import checkpoint
    from runtime.model.decoder import Decoder, DecoderConfig

    torch.manual_seed(0)
    model_fields = dict(layers=1, hidden=32, heads=2, ffn=64, vocab=256, seq=128)
    model = Decoder(DecoderConfig(**model_fields))
    run = tmp_path / "run"
    opt = torch.optim.AdamW(model.parameters())
    checkpoint.save(run / "checkpoints", "stage1-step0000004", [model], [opt],
                    {"stage": 1, "stage_numbering": 1, "step": 4, "stage_done": True, "global_step": 4,
                     "data_position": 64, "model": model_fields})
    return run


def test_flmplan_eval_scores_a_checkpoint_and_refuses_bad_input(tmp_path, process_group):
    run = run_folder(tmp_path, process_group)
    out = tmp_path / "eval"
    r = CliRunner().invoke(app, ["eval", str(run), "--limit", "4", "--items", "8", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout[r.stdout.index("{"):])
    assert {row["family"] for row in result["rows"]} == {t.family for t in TASKS.values()}
    assert all(row["stage"] == 1 and 0 <= row["low"] <= row["accuracy"] <= row["high"] <= 1 for row in result["rows"])
    assert (out / "stage1-lm-eval-results.json").exists() and (out / "iq.html").exists()
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    for args, words in ((["eval", str(tmp_path / "missing")], "does not exist"),
                        (["eval", str(tmp_path / "empty")], "no usable checkpoint"),
                        (["eval", str(run), "--suite", "mmlu"], "Unknown suite 'mmlu'")):
        r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "e2")])
        assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output, r.output
