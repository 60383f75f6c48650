"""FLM-101B's four tests of intelligence (arXiv 2309.03852, §5), generated so that nothing scored
can have been memorised: symbolic mapping, rule understanding, pattern mining, anti-interference.

Every item is deterministic from (task, split, seed, index), has an n-shot prompt in the style of
the FLM-101B evaluation (examples, then the query), and an answer that follows from the prompt
alone — `solve` in each task is a reference solver that reads only the prompt, and the tests
hold every item's answer to it. The train and eval splits draw their symbols, words, keys, names
and places from disjoint pools, so an evaluated mapping or key was never in training text; the
random strings of the rule and pattern tasks come from one alphabet, never the same string.

Items are dictionaries (one JSON line each):
    {"task", "family", "split", "prompt", "answer", "choices" (multiple choice only), "distractors"}
Multiple-choice items are scored by log-likelihood of each choice after the prompt, the others by
exact match of the generated answer (runtime/evaluation/harness.py writes lm-eval's task configs).
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass

SPLITS = ("train", "eval")


def _pool(items: list[str], split: str) -> list[str]:
    """Disjoint halves of a pool: even positions for train, odd for eval."""
    return items[0::2] if split == "train" else items[1::2]


def _words(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < n:
        out.add("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 6))))
    return sorted(out)


# Pools fixed once (their own seeds), then split in two: the splits never share an entry.
SYMBOLS = [a + b for a in "#$%&*@^~" for b in "!?+=<>|/"]
CATEGORIES = {
    "animal": ["cat", "dog", "horse", "tiger", "mouse", "sheep", "whale", "eagle", "camel", "zebra", "otter", "goat"],
    "fruit": ["apple", "pear", "plum", "mango", "lemon", "grape", "peach", "melon", "cherry", "kiwi", "lime", "fig"],
    "color": ["red", "blue", "green", "black", "white", "pink", "brown", "grey", "gold", "violet", "teal", "navy"],
    "tool": ["hammer", "saw", "drill", "wrench", "chisel", "axe", "file", "plane", "rasp", "level", "clamp", "vise"],
}
NAMES = ["Mary", "John", "Sandra", "Daniel", "Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi",
         "Ivan", "Judy", "Mallory", "Oscar", "Peggy", "Rupert", "Sybil", "Trent", "Victor", "Walter", "Xena", "Yuri"]
PLACES = ["kitchen", "garden", "office", "bedroom", "hallway", "bathroom", "cellar", "attic", "garage", "porch",
          "library", "studio", "pantry", "balcony", "lobby", "yard"]
THINGS = ["ball", "book", "key", "apple", "box", "cup", "pen", "hat", "lamp", "coin", "ring", "shoe"]
KEYWORDS = _words(400, seed=11)
# The strings of rule understanding and pattern mining: random over one alphabet in both splits
# (the rule is stated, or shown, in the prompt; the tests check no eval string is in the train split).
LETTERS = "abcdefghijklmnop"


@dataclass(frozen=True)
class Task:
    """One sub-task: a family, a generator of one item from an rng, and the reference solver."""

    name: str
    family: str
    kind: str                                    # "multiple_choice" or "generate"
    make: Callable[[random.Random, str, dict], dict]
    solve: Callable[[str], str]

    def chance(self, items: list[dict]) -> float:
        """The accuracy of guessing: a uniform pick among the choices (multiple choice), or the most
        common answer given to every item (generation: a count of 0 or 1 is often right)."""
        if self.kind == "multiple_choice":
            return sum(1 / len(i["choices"]) for i in items) / len(items)
        answers = [i["answer"] for i in items]
        return max(answers.count(a) for a in set(answers)) / len(answers)


def item(task: Task, split: str, seed: int, index: int, **difficulty) -> dict:
    rng = random.Random(f"{task.name}/{split}/{seed}/{index}")
    out = task.make(rng, split, difficulty)
    return {"task": task.name, "family": task.family, "split": split, "id": index, **out}


def generate(task: Task, split: str, n: int, seed: int = 0, **difficulty) -> list[dict]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    return [item(task, split, seed, i, **difficulty) for i in range(n)]


# --- symbolic mapping: labels replaced by arbitrary symbols --------------------------------------

def _symbolic_category(rng: random.Random, split: str, d: dict) -> dict:
    shots = d.get("shots", 6)
    cats = rng.sample(sorted(CATEGORIES), d.get("classes", 2))
    symbols = rng.sample(_pool(SYMBOLS, split), len(cats))
    words = {c: _pool(CATEGORIES[c], split) for c in cats}
    lines = []
    for k in range(shots):
        c = cats[k % len(cats)] if k < len(cats) else rng.choice(cats)
        lines.append(f"{rng.choice(words[c])} -> {symbols[cats.index(c)]}")
    rng.shuffle(lines)
    target = rng.choice(cats)
    query = rng.choice(words[target])
    prompt = "\n".join(lines) + f"\n{query} ->"
    return {"prompt": prompt, "answer": f" {symbols[cats.index(target)]}", "choices": [f" {s}" for s in symbols],
            "distractors": len(symbols) - 1}


def _solve_symbolic_category(prompt: str) -> str:
    *examples, query = prompt.split("\n")
    word = query.removesuffix(" ->")
    cat = next(c for c, ws in CATEGORIES.items() if word in ws)
    for line in examples:
        w, s = line.split(" -> ")
        if w in CATEGORIES[cat]:
            return f" {s}"
    raise ValueError("no example of the query's class")


def _symbolic_parity(rng: random.Random, split: str, d: dict) -> dict:
    shots = d.get("shots", 6)
    symbols = rng.sample(_pool(SYMBOLS, split), 2)         # even, odd
    n_even = max(1, shots // 2)
    evens = rng.sample(range(10, 100, 2), n_even + 1)
    odds = rng.sample(range(11, 100, 2), shots - n_even + 1)
    lines = [f"{n} -> {symbols[n % 2]}" for n in evens[:-1] + odds[:-1]]   # both parities shown
    rng.shuffle(lines)
    q = rng.choice([evens[-1], odds[-1]])
    return {"prompt": "\n".join(lines) + f"\n{q} ->", "answer": f" {symbols[q % 2]}",
            "choices": [f" {s}" for s in symbols], "distractors": 1}


def _solve_symbolic_parity(prompt: str) -> str:
    *examples, query = prompt.split("\n")
    q = int(query.removesuffix(" ->"))
    for line in examples:
        n, s = line.split(" -> ")
        if int(n) % 2 == q % 2:
            return f" {s}"
    raise ValueError("no example of the query's parity")


# --- rule understanding: follow a stated rule -----------------------------------------------------

def _shots(one: Callable[[], tuple[str, str]], shots: int) -> dict:
    """A rule-understanding item: `shots` solved examples of the rule, then the query."""
    examples = [one() for _ in range(shots)]
    query, answer = one()
    return {"prompt": "\n".join(p + a for p, a in examples) + "\n" + query, "answer": answer, "distractors": 0}


def _rule_count(rng: random.Random, split: str, d: dict) -> dict:
    """The count is drawn uniformly from 0..most, then placed: over uniform random strings a count
    would be 0 most of the time, and answering 0 would pass as following the rule."""
    length = d.get("length", 8)
    most = min(d.get("most", 4), length)

    def one() -> tuple[str, str]:
        ch = rng.choice(LETTERS)
        k = rng.randint(0, most)
        chars = [ch] * k + [rng.choice(LETTERS.replace(ch, "")) for _ in range(length - k)]
        rng.shuffle(chars)
        return f"Count the letter {ch} in: {''.join(chars)}\nAnswer:", f" {k}"

    return _shots(one, d.get("shots", 3))


def _solve_rule_count(prompt: str) -> str:
    m = re.search(r"Count the letter (\w) in: (\w+)\nAnswer:$", prompt)
    return f" {m.group(2).count(m.group(1))}"


def _rule_replace(rng: random.Random, split: str, d: dict) -> dict:
    length = d.get("length", 6)

    def one() -> tuple[str, str]:
        a, b = rng.sample(LETTERS, 2)
        s = "".join(rng.choice(LETTERS) for _ in range(length - 1)) + a
        s = "".join(rng.sample(s, len(s)))
        return f"Replace {a} with {b} in: {s}\nAnswer:", f" {s.replace(a, b)}"

    return _shots(one, d.get("shots", 3))


def _solve_rule_replace(prompt: str) -> str:
    m = re.search(r"Replace (\w) with (\w) in: (\w+)\nAnswer:$", prompt)
    return f" {m.group(3).replace(m.group(1), m.group(2))}"


# --- pattern mining: induce a transformation from examples ----------------------------------------

PATTERNS = {
    "head": lambda s, k: s[:k],
    "tail": lambda s, k: s[-k:],
    "repeat": lambda s, k: s * 2,
    "reverse": lambda s, k: s[::-1],
}


def _pattern(rng: random.Random, split: str, d: dict) -> dict:
    length = d.get("length", 6)
    shots = d.get("shots", 4)
    while True:       # only items whose examples leave one answer (induction has a unique conclusion)
        name = rng.choice(sorted(PATTERNS))
        k = rng.randint(2, length - 2)
        strings = ["".join(rng.choice(LETTERS) for _ in range(length)) for _ in range(shots + 1)]
        pairs = [(x, PATTERNS[name](x, k)) for x in strings[:shots]]
        answers = {f(strings[-1], j) for f in PATTERNS.values() for j in range(1, length + 1)
                   if all(f(a, j) == b for a, b in pairs)}
        if len(answers) == 1:
            break
    lines = [f"{a} -> {b}" for a, b in pairs]
    return {"prompt": "\n".join(lines) + f"\n{strings[-1]} ->", "answer": f" {answers.pop()}",
            "distractors": 0, "pattern": name}


def _solve_pattern(prompt: str) -> str:
    """Induction: the one (pattern, k) consistent with every example; deduction: apply it."""
    *examples, query = prompt.split("\n")
    pairs = [line.split(" -> ") for line in examples]
    q = query.removesuffix(" ->")
    if not pairs or not query.endswith(" ->"):
        raise ValueError("not a pattern-mining prompt")
    for _, f in sorted(PATTERNS.items()):
        for k in range(1, len(q) + 1):
            if all(f(a, k) == b for a, b in pairs):
                return f" {f(q, k)}"
    raise ValueError("no pattern fits the examples")


# --- anti-interference: the right item among distractors ------------------------------------------

def _multi_key(rng: random.Random, split: str, d: dict) -> dict:
    keys = rng.sample(_pool(KEYWORDS, split), d.get("keys", 6))
    values = [str(v) for v in rng.sample(range(100, 1000), len(keys))]
    asked = rng.randrange(len(keys))
    text = "\n".join(f"{k}: {v}" for k, v in zip(keys, values, strict=True))
    return {"prompt": f"{text}\nThe value of {keys[asked]} is", "answer": f" {values[asked]}",
            "choices": [f" {v}" for v in values], "distractors": len(keys) - 1}


def _solve_multi_key(prompt: str) -> str:
    *lines, question = prompt.split("\n")
    key = question.removeprefix("The value of ").removesuffix(" is")
    return " " + dict(line.split(": ") for line in lines)[key]


def _one_fact(rng: random.Random, split: str, d: dict) -> dict:
    names = rng.sample(_pool(NAMES, split), d.get("people", 3))
    places = _pool(PLACES, split)
    where = {}
    facts = []
    for _ in range(d.get("moves", 5)):
        n, p = rng.choice(names), rng.choice(places)
        where[n] = p
        facts.append(f"{n} went to the {p}.")
    asked = rng.choice(sorted(where))
    choices = sorted(set(places))
    return {"prompt": " ".join(facts) + f" Where is {asked}? Answer: the", "answer": f" {where[asked]}",
            "choices": [f" {c}" for c in choices], "distractors": len(facts) - 1}


def _solve_one_fact(prompt: str) -> str:
    asked = re.search(r"Where is (\w+)\? Answer: the$", prompt).group(1)
    last = None
    for n, p in re.findall(r"(\w+) went to the (\w+)\.", prompt):
        if n == asked:
            last = p
    return f" {last}"


def _two_facts(rng: random.Random, split: str, d: dict) -> dict:
    names = rng.sample(_pool(NAMES, split), d.get("people", 3))
    places = _pool(PLACES, split)
    thing = rng.choice(_pool(THINGS, split))
    holder = rng.choice(names)
    facts = [f"{n} went to the {rng.choice(places)}." for n in names]
    facts.insert(rng.randrange(len(facts) + 1), f"{holder} picked up the {thing}.")
    final = rng.choice(places)
    facts.append(f"{holder} went to the {final}.")
    for _ in range(d.get("distractors", 2)):
        facts.append(f"{rng.choice([n for n in names if n != holder] or names)} went to the {rng.choice(places)}.")
    return {"prompt": " ".join(facts) + f" Where is the {thing}? Answer: the", "answer": f" {final}",
            "choices": [f" {c}" for c in sorted(set(places))], "distractors": len(facts) - 2}


def _solve_two_facts(prompt: str) -> str:
    thing = re.search(r"Where is the (\w+)\? Answer: the$", prompt).group(1)
    holder = re.search(rf"(\w+) picked up the {thing}\.", prompt).group(1)
    after = prompt[prompt.index(f"picked up the {thing}."):]
    before = prompt[:prompt.index(f"picked up the {thing}.")]
    moves = re.findall(rf"{holder} went to the (\w+)\.", after) or re.findall(rf"{holder} went to the (\w+)\.", before)
    return f" {moves[-1]}"


TASKS = {t.name: t for t in (
    Task("symbolic_category", "symbolic_mapping", "multiple_choice", _symbolic_category, _solve_symbolic_category),
    Task("symbolic_parity", "symbolic_mapping", "multiple_choice", _symbolic_parity, _solve_symbolic_parity),
    Task("rule_count", "rule_understanding", "generate", _rule_count, _solve_rule_count),
    Task("rule_replace", "rule_understanding", "generate", _rule_replace, _solve_rule_replace),
    Task("pattern_mining", "pattern_mining", "generate", _pattern, _solve_pattern),
    Task("multi_key_retrieval", "anti_interference", "multiple_choice", _multi_key, _solve_multi_key),
    Task("single_supporting_fact", "anti_interference", "multiple_choice", _one_fact, _solve_one_fact),
    Task("two_supporting_facts", "anti_interference", "multiple_choice", _two_facts, _solve_two_facts),
)}
FAMILIES = sorted({t.family for t in TASKS.values()})


def training_text(n: int, seed: int = 0) -> str:
    """The train split of every task as plain text (prompt and answer, items apart by a blank line),
    to mix into a run's --data."""
    items = [i for t in TASKS.values() for i in generate(t, "train", n, seed=seed)]
    random.Random(seed).shuffle(items)
    return "".join(i["prompt"] + i["answer"] + "\n\n" for i in items)


def propositions(n: int, seed: int = 0) -> list[dict]:
    """The multiple-choice tasks' train split as FreeLM propositions (runtime/objectives/freelm.py's teacher file):
    the prompt as text, one choice as the proposition, true when it is the answer (half of them)."""
    rng = random.Random(seed)
    out = []
    for t in (t for t in TASKS.values() if t.kind == "multiple_choice"):
        for i in generate(t, "train", n, seed=seed):
            label = rng.random() < 0.5
            choice = i["answer"] if label else rng.choice([c for c in i["choices"] if c != i["answer"]])
            out.append({"text": i["prompt"], "proposition": choice.strip(), "label": label, "task": t.name})
    return out
