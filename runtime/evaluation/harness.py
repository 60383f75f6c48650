"""The IQ tests on EleutherAI's lm-evaluation-harness (`pip install -e '.[eval]'`).

- `write_tasks` generates each task's eval split as JSON lines and writes lm-eval task configs
  (YAML) over them, with a group `iq`: multiple choice scored by the log-likelihood of each choice,
  generation by exact match. `lm_eval --include_path DIR --tasks iq --model …` scores any model
  lm-eval supports with them.
- `FlmplanLM` is lm-eval's model interface over a flmplan checkpoint of any layout, loaded whole
  onto one process, with the runtime's byte tokens. Importing this module registers it with lm-eval
  as "flmplan": `simple_evaluate(model="flmplan", model_args={"checkpoint": PATH}, tasks=[...])`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from runtime.evaluation.iq_tasks import TASKS, generate

GROUP = "iq"


def task_name(name: str) -> str:
    return f"{GROUP}_{name}"


def write_tasks(folder: Path, n: int = 100, seed: int = 0, tasks: list[str] | None = None) -> list[str]:
    """Eval-split items and lm-eval task configs for each task; returns the task names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for t in (TASKS[k] for k in (tasks or sorted(TASKS))):
        data = folder / f"{t.name}.jsonl"
        data.write_text("".join(json.dumps(i) + "\n" for i in generate(t, "eval", n, seed=seed)))
        common = [f"task: {task_name(t.name)}", "dataset_path: json",
                  f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data.resolve()))}", "test_split: test",
                  'doc_to_text: "{{prompt}}"', f"tag: {GROUP}_{t.family}", "metadata:\n  version: 1.0"]
        if t.kind == "multiple_choice":
            body = ["output_type: multiple_choice", 'doc_to_choice: "{{choices}}"',
                    'doc_to_target: "{{choices.index(answer)}}"', "target_delimiter: \"\"",
                    "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true"]
        else:
            body = ["output_type: generate_until", 'doc_to_target: "{{answer}}"', "target_delimiter: \"\"",
                    "generation_kwargs:\n  until: [\"\\n\"]\n  do_sample: false\n  max_gen_toks: 16",
                    "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
                    "    regexes_to_ignore: [\"^\\\\s+\", \"\\\\s+$\"]"]
        (folder / f"{t.name}.yaml").write_text("\n".join(common + body) + "\n")
        names.append(task_name(t.name))
    (folder / f"{GROUP}.yaml").write_text(f"group: {GROUP}\ntask:\n" + "".join(f"  - {n}\n" for n in names)
                                          + "metadata:\n  version: 1.0\n")
    return names


@register_model("flmplan")
class FlmplanLM(LM):
    """lm-eval's model interface over a flmplan Decoder and the tokenizer its run trained with (bytes
    by default); the end-of-document id starts every text, as it ended every document in training."""

    def __init__(self, model=None, checkpoint: str | None = None, batch_size: int = 16, codec=None,
                 **kwargs) -> None:
        super().__init__()
        from runtime.checkpoint import load_whole
        from runtime.data.corpus import run_codec
        from runtime.data.indexed import ByteCodec

        self.model = model if model is not None else load_whole(Path(checkpoint))
        if codec is None:
            codec = run_codec(Path(checkpoint).parent.parent) if checkpoint else ByteCodec()
        self.codec = codec
        self.seq = self.model.cfg.seq
        self.batch_size = int(batch_size)

    def encode(self, text: str) -> list[int]:
        return self.codec.encode(text)

    @torch.no_grad()
    def _logprobs(self, sequences: list[list[int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per sequence (at most seq + 1 tokens): the log-probability of each token after the first,
        and whether it was the most likely one."""
        out = []
        for i in range(0, len(sequences), self.batch_size):
            chunk = sequences[i:i + self.batch_size]
            width = max(len(s) for s in chunk) - 1
            x = torch.zeros(len(chunk), width, dtype=torch.long)
            for j, s in enumerate(chunk):
                x[j, :len(s) - 1] = torch.tensor(s[:-1])
            logp = F.log_softmax(self.model(x).float(), dim=-1)
            for j, s in enumerate(chunk):
                n, target = len(s) - 1, torch.tensor(s[1:])
                out.append((logp[j, torch.arange(n), target], logp[j, :n].argmax(-1) == target))
        return out

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        seqs, lengths = [], []
        for context, continuation in (r.args for r in requests):
            cont = self.encode(continuation)
            seqs.append([self.codec.eod, *self.encode(context)][-(self.seq + 1 - len(cont)):] + cont)
            lengths.append(len(cont))
        return [(float(lp[-n:].sum()), bool(greedy[-n:].all()))
                for (lp, greedy), n in zip(self._logprobs(seqs), lengths, strict=True)]

    def loglikelihood_rolling(self, requests) -> list[float]:
        """Every token of the text predicted once, each with as much context as fits (end-of-document first)."""
        out = []
        for (text,) in (r.args for r in requests):
            tokens = [self.codec.eod, *self.encode(text)]
            total = 0.0
            for start in range(1, len(tokens), self.seq):
                end = min(start + self.seq, len(tokens))
                (lp, _), = self._logprobs([tokens[max(0, end - self.seq - 1):end]])
                total += float(lp[-(end - start):].sum())
            out.append(total)
        return out

    @torch.no_grad()
    def generate_until(self, requests) -> list[str]:
        out = []
        for context, kwargs in (r.args for r in requests):
            until = kwargs.get("until", ["\n"])
            until = [until] if isinstance(until, str) else until
            tokens = self.encode(context)
            made: list[int] = []
            for _ in range(int(kwargs.get("max_gen_toks", 32))):
                x = torch.tensor([(tokens + made)[-self.seq:]])
                made.append(int(self.model(x)[0, -1].argmax()))
                text = self.codec.decode(made)
                if any(u in text for u in until):
                    break
            text = self.codec.decode(made)
            for u in until:
                text = text.split(u)[0]
            out.append(text)
        return out
