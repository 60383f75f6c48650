"""FreeLM's teacher signal (runtime/objectives/freelm.py): the format, the alternation, the head across a growth,
the planner's count of teacher steps, and one sentence for a bad teacher file."""

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from flmplan.cli import app
from planner.errors import FlmplanError
from runtime.growth.msg import grow_decoder
from runtime.model.decoder import Decoder, DecoderConfig
from runtime.objectives import freelm

ROOT = Path(__file__).resolve().parents[1]


def test_a_proposition_is_text_sep_proposition_cls_with_the_label_at_cls():
    p = freelm.Proposition("abcdefgh", "xyz", True)
    ids, at = freelm.encode(p, 10, 256)
    # Too long: the text is cut from its start, the proposition kept whole; [sep] = 0xFE, [cls] = 0xFF.
    assert ids == [*b"defgh", 254, *b"xyz", 255] and at == 9
    x, y = freelm.batch([p, freelm.Proposition("", "q", False)], 10, 256)
    assert y[0].tolist() == [-100] * 9 + [1] and y[1].tolist() == [-100, -100, 0] + [-100] * 7
    assert x[1].tolist()[:3] == [254, ord("q"), 255]


def test_teacher_batches_alternate_as_configured_and_follow_from_the_step():
    assert [freelm.is_teacher_step(s, 3) for s in range(7)] == [False, False, True, False, False, True, False]
    assert [freelm.teacher_steps_before(s, 3) for s in (0, 2, 3, 6)] == [0, 0, 1, 2]
    assert not any(freelm.is_teacher_step(s, 0) for s in range(5))
    props = freelm.synthetic_propositions(40, seed=0)
    sampler = freelm.TeacherSampler(props, seq=48, vocab=256, seed=5)
    a = sampler.batch(7, 8, 0, 1)
    again = freelm.TeacherSampler(props, seq=48, vocab=256, seed=5).batch(7, 8, 0, 1)   # a resumed run
    assert torch.equal(a[0], again[0]) and torch.equal(a[1], again[1])
    halves = [sampler.batch(7, 8, r, 2)[0] for r in (0, 1)]                       # two data-parallel ranks
    assert torch.equal(torch.cat(halves), a[0])
    labels = [p.label for p in props]
    assert 0.3 < sum(labels) / len(labels) < 0.7


@pytest.mark.parametrize("mup", [False, True])
@pytest.mark.parametrize("change", [dict(hidden=64, heads=4, ffn=128), dict(layers=4),
                                    dict(hidden=64, heads=4, ffn=128, layers=4)], ids=["width", "depth", "both"])
def test_the_teacher_heads_output_is_kept_across_a_growth(change, mup):
    torch.manual_seed(0)
    old_cfg = DecoderConfig(layers=2, hidden=32, heads=2, ffn=64, vocab=256, seq=24, teacher_head=True, mup=mup,
                            mup_base_width=16, mup_output_mult=2.0)
    old = Decoder(old_cfg)
    x, _ = freelm.batch(freelm.synthetic_propositions(4, seed=1), 24, 256)
    with torch.no_grad():
        grown, _, _ = grow_decoder(old, DecoderConfig(**{**old_cfg.to_dict(), **change}), grow_steps=4)
        old.signal = grown.signal = "teacher"
        before, after = old(x), grown(x)
    assert after.shape == before.shape == (4, 24, 2)
    assert torch.allclose(after, before, atol=1e-5, rtol=0)


def test_a_head_added_at_a_growth_starts_fresh_and_the_language_function_is_kept(grow_from_checkpoint):
    """A stage that begins the teacher signal after a language-only one: the head is new (its own init,
    zero moments), nothing else changes."""
    from runtime.parallel.optim import make_optimizer

    torch.manual_seed(1)
    old_cfg = DecoderConfig(layers=1, hidden=16, heads=2, ffn=32, vocab=256, seq=8)
    old = Decoder(old_cfg)
    opt = make_optimizer(old, 1e-3)
    tokens = torch.randint(0, 200, (2, 8))
    old(tokens).sum().backward()
    opt.step()
    cfg = DecoderConfig(**{**old_cfg.to_dict(), "hidden": 32, "heads": 4, "ffn": 64, "teacher_head": True})
    grown, grown_opt = grow_from_checkpoint(old, opt, cfg)
    with torch.no_grad():
        assert torch.allclose(grown(tokens), old(tokens), atol=1e-5, rtol=0)
    assert grown.teacher.weight.abs().sum() > 0
    assert torch.count_nonzero(grown_opt.state[grown.teacher.weight]["exp_avg"]) == 0


def cli(*args: str):
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.output


def test_a_bad_teacher_file_is_one_sentence_and_exit_2(tmp_path):
    good = [{"text": "t", "proposition": "p", "label": True}] * 12
    files = {
        "missing-label": ([{"text": "a", "proposition": "b"}] * 12, 'line 1, has no "label"'),
        "empty": ([], "has 0 propositions"),
        "string-label": ([{"text": "a", "proposition": "b", "label": "yes"}] * 12, '"label" must be true or false'),
        "not-json": (None, "line 1, is not JSON"),
    }
    plan = json.loads((ROOT / "examples/plans/tiny_one_stage.json").read_text())
    plan["stages"][0]["objective"] = {"kind": "freelm", "teacher_every": 2}
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan))
    (tmp_path / "good.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good))
    for name, (rows, words) in files.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text("{oops\n" if rows is None else "".join(json.dumps(r) + "\n" for r in rows))
        with pytest.raises(FlmplanError, match=words.replace("(", r"\(")):
            freelm.read_teacher_file(path)
        for args in (("run", str(plan_path), "--nproc", "1", "--teacher-data", str(path), "--out",
                      str(tmp_path / "run")),
                     ("simulate", "--teacher-every", "4", "--teacher-data", str(path))):
            code, out = cli(*args)
            assert code == 2 and words in out and "Traceback" not in out, (args, out)
    for args, words in (
        (("run", str(plan_path), "--nproc", "1", "--out", str(tmp_path / "run")), "names no teacher_data"),
        (("run", str(ROOT / "examples/plans/tiny_one_stage.json"), "--nproc", "1", "--teacher-data",
          str(tmp_path / "good.jsonl"), "--out", str(tmp_path / "run")), "plans with a FreeLM objective"),
        (("simulate", "--teacher-data", str(tmp_path / "good.jsonl")), "needs --teacher-every"),
        (("simulate", "--teacher-every", "1"), "0 (off) or at least 2"),
    ):
        code, out = cli(*args)
        assert code == 2 and words in out and "Traceback" not in out, (args, out)
    assert not (tmp_path / "run").exists()


def test_the_planner_pays_for_the_teacher_steps(tmp_path):
    """Every 4th step a teacher batch: each stage's steps are its language steps plus a third more,
    and its days and cost are those steps at the stage's step time."""
    path = tmp_path / "plan.json"
    code, out = cli("simulate", "--budget", "100000", "--teacher-every", "4", "--trials", "20", "--out", str(path))
    assert code == 0, out
    assert "FreeLM objective: every 4th step is a teacher batch" in out and "(+33%)" in out
    plan = json.loads(path.read_text())
    for st in plan["stages"]:
        language = math.ceil(st["tokens"] / (st["layout"]["global_batch"] * st["model"]["seq"]))
        assert st["steps"] == language + language // 3
        assert st["objective"] == {"kind": "freelm", "teacher_every": 4, "teacher_data": None}
        assert st["predicted"]["days"] == pytest.approx(st["steps"] * st["predicted"]["step_s"] / 86400, rel=1e-9)


def test_the_iq_generators_train_split_is_a_teacher_source():
    """`teacher_data: "iq"`: propositions from the IQ tasks' train split, per task, half true."""
    from planner.plan.plan_file import plan_from_dict
    from runtime.data.corpus import load_corpus
    from runtime.objectives.freelm import teacher_samplers

    plan = json.loads((ROOT / "examples/plans/tiny_one_stage.json").read_text())
    plan["stages"][0]["objective"] = {"kind": "freelm", "teacher_every": 2, "teacher_data": "iq"}
    sampler, held = teacher_samplers(plan_from_dict(plan), seed=0, corpus=load_corpus(None))[0]
    tasks = {p.task for p in sampler.props}
    assert "multi_key_retrieval" in tasks and {p.task for p in held} == tasks
    assert 0.45 < sum(p.label for p in sampler.props) / len(sampler.props) < 0.55
    x, y = sampler.batch(0, 4, 0, 1)
    assert x.shape == (4, 64) and (y != freelm.IGNORE).sum() == 4
