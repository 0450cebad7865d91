"""The `study` task: questions where the procedure decides success, for comparing RL algorithms.

Each question needs two or three searches over a generated corpus and then a subtraction in python:

- `founding` (3 searches): "How many years after the founding of the city where Orla Venley was born was
  The Silent Harbor first published?"  writer -> birth city, city -> founding year, book -> year.
- `age` (2 searches): "How old was Orla Venley when The Silent Harbor was first published?"
- `gap` (2 searches): "How many years after The Silent Harbor was The Iron Bell first published?"

The corpus holds distractors next to every fact a question needs, so the query, the order of steps and
reading the right page matter:

- a namesake writer (same surname, a first name one sound away) born elsewhere, in another year;
- a prize named after the writer, "founded in" another city in another year (a near-miss for the city);
- "New <city>", a different town founded in another year (a near-miss for the founding year);
- a "second edition" page of every book with a later year (a near-miss for the publication year);
- books whose titles share words ("The Silent Harbor", "The Silent Tower", "The Golden Harbor").

Training and held-out questions ask about disjoint writers (and so disjoint books), drawn from separate
seed streams, so the held-out rows do not change when num_train does. Every answer is an integer that
`check_study_question` recomputes from the corpus text. Each row's `extra_info.plan` lists the tool calls
that solve it; search steps that read a number carry the near-miss alternative (`near`: the query a
careless policy would send, the fact it would read, the value it would use), which `appo.data.traces`
uses to write imperfect cold-start traces.
"""

from __future__ import annotations

import random
import re

from appo.data.tasks import (
    _ADJECTIVES,
    _CITY_END,
    _FIRST_END,
    _LAST_END,
    _NOUNS,
    _RIVERS,
    TaskData,
    _namer,
    _row,
)

STUDY_SOURCE = "appo/study"
QUESTION_KINDS = ("founding", "age", "gap")
_HELD_OUT_SEED_OFFSET = 2_000_029


def _namesake_first(first: str, rng: random.Random, taken: set[str]) -> str:
    """A first name one ending away from `first` (Orla -> Orlin), not yet used with this surname."""
    stem = first[: -len(next(e for e in sorted(_FIRST_END, key=len, reverse=True) if first.endswith(e)))]
    options = [stem + e for e in _FIRST_END if stem + e != first and stem + e not in taken]
    return rng.choice(options)


def _facts():
    return {
        "born": lambda w: f"{w['name']} was born in {w['city']} in {w['year']}.",
        "founded": lambda c, y: f"{c} was founded in {y}.",
        "published": lambda b, w, y: f"{b} is a novel by {w}, first published in {y}.",
        "edition": lambda b, y: f"A second edition of {b} appeared in {y}.",
        "prize": lambda w, c, y: f"The {w} Prize was founded in {c} in {y}.",
    }


def _writers_for(n_questions: int) -> int:
    """Writers that `n_questions` questions use: one each, two for every third (a `gap` question)."""
    return n_questions + n_questions // len(QUESTION_KINDS)


_N_TOWNS = 64


class _World:
    """The corpus under construction: docs (title -> text), founding years, and the names in use."""

    def __init__(self, seed: int):
        rng = random.Random(seed)
        self.used: set[str] = set()
        make = self.namer(rng)
        self.towns = [make((2, _CITY_END)) for _ in range(_N_TOWNS)]
        self.founded = {c: rng.randint(900, 1700) for c in self.towns}
        self.docs: dict[str, str] = {}
        self.surnames: dict[str, set[str]] = {}
        facts = _facts()
        for c in self.towns:
            self.docs[c] = f"{c} is a town on the {rng.choice(_RIVERS)} river. {facts['founded'](c, self.founded[c])}"
            new = f"New {c}"
            self.founded[new] = self.founded[c] + rng.randint(40, 250)
            self.docs[new] = f"{facts['founded'](new, self.founded[new])} Its settlers came from {c}."

    def namer(self, rng: random.Random):
        """tasks._namer over `rng`, skipping names another stream of this world already made."""
        inner = _namer(rng)

        def make(*parts):
            while (name := inner(*parts)) in self.used:
                pass
            self.used.add(name)
            return name

        return make

    def add_writers(self, n: int, rng: random.Random) -> list[dict]:
        """`n` writers with their book, namesake, prize and second edition, all written into the corpus."""
        make, facts, towns = self.namer(rng), _facts(), self.towns
        writers = []
        for _ in range(n):
            full = make((1, _FIRST_END), (2, _LAST_END))
            first, last = full.split(" ")
            w = {"name": full, "city": rng.choice(towns), "year": rng.randint(1780, 1940)}
            title = f"The {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
            while title in self.docs:
                title = f"The {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} of {make((2, _CITY_END))}"
            w["book"], w["published"] = title, w["year"] + rng.randint(18, 70)
            w["edition"] = w["published"] + rng.randint(3, 40)
            taken = self.surnames.setdefault(last, set())
            taken.add(first)
            twin = f"{_namesake_first(first, rng, taken)} {last}"
            while twin in self.used:  # the namesake's full name may exist as another writer's
                twin = f"{_namesake_first(first, rng, taken | {twin.split(' ')[0]})} {last}"
            taken.add(twin.split(" ")[0])
            self.used.add(twin)
            w["namesake"] = {"name": twin, "city": rng.choice([c for c in towns if c != w["city"]]),
                             "year": w["year"] + rng.choice([-1, 1]) * rng.randint(3, 30)}
            w["prize"] = {"city": rng.choice([c for c in towns if c != w["city"]]),
                          "year": w["published"] + rng.randint(5, 60)}
            writers.append(w)
            self.docs[full] = f"{facts['born'](w)} {full} wrote {title}."
            self.docs[twin] = f"{facts['born'](w['namesake'])} {twin} was a painter."
            self.docs[f"{full} Prize"] = facts["prize"](full, w["prize"]["city"], w["prize"]["year"])
            self.docs[title] = facts["published"](title, full, w["published"])
            self.docs[f"{title} (second edition)"] = facts["edition"](title, w["edition"])
        return writers


def _search(query: str, fact: str, goal: str, read: str, **extra) -> dict:
    """A search step: `goal` says what it looks for, `read` what it found (`{value}` where a number goes)."""
    return {"tool": "search", "payload": query, "fact": fact, "think": goal, "read": read, **extra}


def _python(expr: str, values: dict[str, int]) -> dict:
    return {"tool": "python", "payload": f"print({expr.format(**values)})", "expr": expr, "think": "Subtract."}


def _published(w: dict, var: str) -> dict:
    f = _facts()
    return _search(f"{w['book']} first published", f["published"](w["book"], w["name"], w["published"]),
                   f"Find when {w['book']} was first published.", f"{w['book']} was first published in {{value}}.",
                   var=var, value=w["published"],
                   near={"payload": f"{w['book']} second edition", "fact": f["edition"](w["book"], w["edition"]),
                         "value": w["edition"]})


def _founding(w: dict, founded: dict[str, int]) -> dict:
    f, city = _facts(), w["city"]
    new = f"New {city}"
    return {
        "kind": "founding",
        "question": f"How many years after the founding of the city where {w['name']} was born was "
                    f"{w['book']} first published?",
        "answer": w["published"] - founded[city],
        "plan": [
            _search(f"{w['name']} born", f["born"](w), f"Find where {w['name']} was born.",
                    f"{w['name']} was born in {city}."),
            _search(f"{city} founded", f["founded"](city, founded[city]), f"Find when {city} was founded.",
                    f"{city} was founded in {{value}}.", var="a", value=founded[city],
                    near={"payload": f"{new} founded", "fact": f["founded"](new, founded[new]),
                          "value": founded[new]}),
            _published(w, "b"),
            _python("{b} - {a}", {"a": founded[city], "b": w["published"]}),
        ],
    }


def _age(w: dict) -> dict:
    f, twin = _facts(), w["namesake"]
    return {
        "kind": "age",
        "question": f"How old was {w['name']} when {w['book']} was first published?",
        "answer": w["published"] - w["year"],
        "plan": [
            _search(f"{w['name']} born", f["born"](w), f"Find when {w['name']} was born.",
                    f"{w['name']} was born in {{value}}.", var="a", value=w["year"],
                    near={"payload": f"{twin['name']} born", "fact": f["born"](twin), "value": twin["year"]}),
            _published(w, "b"),
            _python("{b} - {a}", {"a": w["year"], "b": w["published"]}),
        ],
    }


def _gap(first: dict, second: dict) -> dict:
    if first["published"] > second["published"]:
        first, second = second, first
    return {
        "kind": "gap",
        "question": f"How many years after {first['book']} was {second['book']} first published?",
        "answer": second["published"] - first["published"],
        "plan": [_published(first, "a"), _published(second, "b"),
                 _python("{b} - {a}", {"a": first["published"], "b": second["published"]})],
    }


def _questions(writers: list[dict], founded: dict[str, int], n: int, rng: random.Random) -> list[dict]:
    """`n` questions, kinds in equal shares, each writer used by at most one question."""
    pool = list(writers)
    rng.shuffle(pool)
    out = []
    for i in range(n):
        kind = QUESTION_KINDS[i % len(QUESTION_KINDS)]
        if kind == "gap":
            first = pool.pop()
            # a partner published in another year (the question asks "how many years after")
            j = next(j for j in range(len(pool) - 1, -1, -1) if pool[j]["published"] != first["published"])
            out.append(_gap(first, pool.pop(j)))
        else:
            w = pool.pop()
            out.append(_founding(w, founded) if kind == "founding" else _age(w))
    rng.shuffle(out)
    return out


_NUMBER = re.compile(r"\d+")


def check_study_question(question: dict, docs: dict[str, str]) -> bool:
    """The question's facts are written in the corpus, and its answer recomputes from the years those
    facts state (not from the generator's own numbers)."""
    texts = set(docs.values())
    searches = [s for s in question["plan"] if s["tool"] == "search"]
    if not all(any(s["fact"] in t for t in texts) for s in searches):
        return False
    values = {}
    for s in searches:
        if "var" in s:
            years = _NUMBER.findall(s["fact"])
            values[s["var"]] = int(years[-1])
            if values[s["var"]] != s["value"]:
                return False
    expr = question["plan"][-1]["expr"].format(**values)
    left, right = (int(x) for x in expr.split(" - "))
    return left - right == int(question["answer"]) and int(question["answer"]) > 0


def build_study(seed: int, num_train: int, num_val: int, system_prompt: str | None) -> TaskData:
    """Train and held-out rows about disjoint writers, from separate seed streams, plus the corpus.

    The held-out writers and questions come from `seed + offset` alone, so they stay the same whatever
    num_train is; the training writers are made after them and never reuse a held-out name."""
    world = _World(seed)
    held_rng = random.Random(seed + _HELD_OUT_SEED_OFFSET)
    held = world.add_writers(_writers_for(num_val), held_rng)
    train_rng = random.Random(seed)
    trained = world.add_writers(_writers_for(num_train), train_rng)
    val = _questions(held, world.founded, num_val, held_rng)
    train = _questions(trained, world.founded, num_train, train_rng)
    for q in val + train:
        if not check_study_question(q, world.docs):
            raise AssertionError(f"study generator wrote a question its corpus does not support: {q['question']}")

    def rows(items: list[dict], split: str) -> list[dict]:
        return [_row(STUDY_SOURCE, "math", q["question"], str(q["answer"]), i, split, system_prompt, q["plan"],
                     kind=q["kind"]) for i, q in enumerate(items)]

    corpus = [{"id": str(i), "title": title, "text": text} for i, (title, text) in enumerate(world.docs.items())]
    return TaskData(rows(train, "train"), rows(val, "val"), corpus)
