"""Built-in offline tasks: rows in the reference schema, generated deterministically from a seed.

- `arithmetic`: reasoning-gym `basic_arithmetic` (3-4 terms of 2-3 digits, + - * /, parentheses), the
  calibrated quick-start task; every answer is re-checked by evaluating the expression here.
- `multihop`: two-hop questions over a generated encyclopedia of fictional countries, cities, writers
  and novels ("In which country was Orla Venley born?"), which need the search tool. `TaskData.corpus`
  holds the documents ({id, title, text}) for the local BM25 backend; every hop's fact is checked to
  be written in the document the hop looks up.
- `quickstart`: both, `multihop_fraction` of them multihop.
- `study`: two or three searches then a subtraction in python, over a corpus with distractors
  (`appo.data.study_task`), for comparing the RL algorithms on a task where the procedure matters.

Train and held-out rows never share a question. Each row's `extra_info.plan` lists the tool calls that
solve it (`tool`, `payload`, `think`, and for search the `fact` the result must contain), which
`appo.data.traces` turns into SFT conversations.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import random
from dataclasses import dataclass, field
from pathlib import Path

from appo.data.templates import QUICKSTART_SYSTEM_PROMPT

TASKS = ("quickstart", "arithmetic", "multihop", "study")
ARITHMETIC_SOURCE = "appo/arithmetic"
MULTIHOP_SOURCE = "appo/multihop"
ARITHMETIC_SETTINGS = {"min_terms": 3, "max_terms": 4, "min_digits": 2, "max_digits": 3}
# Held-out rows come from their own seed stream, so they do not change when num_train does.
_HELD_OUT_SEED_OFFSET = 1_000_003
_MIN_WRITERS = 400


@dataclass
class TaskData:
    train: list[dict]
    val: list[dict]
    corpus: list[dict] = field(
        default_factory=list
    )  # search documents {id, title, text}; empty without multihop

    def write_corpus(self, path: str | Path) -> Path:
        """Write the corpus as JSONL for `appo index build` / `tools.search_backends.build_index`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for doc in self.corpus:
                f.write(json.dumps(doc, ensure_ascii=False) + "\n")
        return path


def _row(
    source: str,
    ability: str,
    question: str,
    answer: str,
    index: int,
    split: str,
    system_prompt: str | None,
    plan: list[dict],
    **extra,
) -> dict:
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": question}
    ]
    return {
        "data_source": source,
        "prompt": messages,
        "ability": ability,
        "reward_model": {"ground_truth": answer, "style": "rule"},
        "extra_info": {"index": index, "split": split, "question": question, "plan": plan, **extra},
    }


# ------------------------------------------------------------------------------------------ arithmetic

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def evaluate_expression(expr: str) -> int | float:
    """Python's value of an arithmetic expression (ints, + - * /, unary signs, parentheses) without eval,
    so `str(result)` is exactly what `print(expr)` shows."""

    def walk(node: ast.AST) -> int | float:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _BINARY[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](walk(node.operand))
        raise ValueError(f"not a plain arithmetic expression: {expr!r}")

    return walk(ast.parse(expr, mode="eval"))


def _arithmetic_stream(seed: int, size: int) -> list[dict]:
    import reasoning_gym

    return list(reasoning_gym.create_dataset("basic_arithmetic", size=size, seed=seed, **ARITHMETIC_SETTINGS))


def _unique_arithmetic(seed: int, n: int, exclude: set[str]) -> list[dict]:
    """n entries with distinct questions not in `exclude`, each answer confirmed by evaluating it here."""
    if n <= 0:
        return []
    size = n + n // 4 + 16
    while True:
        picked, seen = [], set(exclude)
        for entry in _arithmetic_stream(seed, size):
            expr = entry["metadata"]["expression"]
            value = evaluate_expression(expr)
            if entry["question"] in seen or not math.isclose(value, float(entry["answer"]), abs_tol=1e-9):
                continue
            seen.add(entry["question"])
            picked.append(entry)
            if len(picked) == n:
                return picked
        size *= 2


def _arithmetic_rows(entries: list[dict], split: str, system_prompt: str | None) -> list[dict]:
    rows = []
    for i, entry in enumerate(entries):
        expr = entry["metadata"]["expression"]
        plan = [{"tool": "python", "payload": f"print({expr})", "think": "Use python."}]
        rows.append(
            _row(
                ARITHMETIC_SOURCE,
                "math",
                entry["question"],
                entry["answer"],
                i,
                split,
                system_prompt,
                plan,
                expression=expr,
            )
        )
    return rows


# -------------------------------------------------------------------------------------------- multihop

_SYLLABLES = [
    "bar",
    "cel",
    "dor",
    "fen",
    "gal",
    "hal",
    "jor",
    "kel",
    "lan",
    "mor",
    "nor",
    "ost",
    "pel",
    "quar",
    "ros",
    "sel",
    "tor",
    "ul",
    "vay",
    "wen",
    "yor",
    "zan",
    "ath",
    "bel",
    "cor",
    "dra",
    "eth",
    "fal",
    "gim",
    "hes",
    "ith",
    "kal",
    "lum",
    "mar",
    "nev",
    "ol",
    "pra",
    "ril",
    "sur",
    "tam",
    "ven",
    "wyn",
    "brim",
    "cas",
    "dun",
    "esk",
    "fir",
]
_COUNTRY_END = ("ia", "and", "ora", "mark", "enia", "istan")
_CITY_END = ("holt", "burg", "mere", "ford", "wick", "haven", "port", "dale", "stead", "gate")
_FIRST_END = ("a", "o", "in", "en", "is", "ar", "el")
_LAST_END = ("son", "ley", "ner", "ick", "berg", "wood", "ton")
_ADJECTIVES = [
    "Silent",
    "Hidden",
    "Broken",
    "Golden",
    "Distant",
    "Bitter",
    "Quiet",
    "Burning",
    "Frozen",
    "Endless",
    "Hollow",
    "Crimson",
    "Pale",
    "Wandering",
    "Last",
    "Secret",
    "Gentle",
    "Iron",
    "Lonely",
    "Painted",
]
_NOUNS = [
    "Harbor",
    "Orchard",
    "Tower",
    "Letter",
    "River",
    "Garden",
    "Mirror",
    "Winter",
    "Crown",
    "Lantern",
    "Bridge",
    "Forest",
    "Voyage",
    "Shadow",
    "Promise",
    "Island",
    "Road",
    "Bell",
    "Meadow",
    "Star",
]
_RIVERS = ["Amber", "Slate", "Willow", "Heron", "Thistle", "Copper", "Moss", "Falcon", "Birch", "Cinder"]


def _namer(rng: random.Random):
    """Makes names that are new among all names it has made (titles must not collide in the corpus)."""
    used: set[str] = set()

    def word(syllables: int, endings: tuple[str, ...]) -> str:
        return ("".join(rng.choice(_SYLLABLES) for _ in range(syllables)) + rng.choice(endings)).capitalize()

    def make(*parts: tuple[int, tuple[str, ...]]) -> str:
        while True:
            name = " ".join(word(n, endings) for n, endings in parts)
            if name not in used:
                used.add(name)
                return name

    return make


@dataclass
class _World:
    docs: dict[str, str]  # title -> text
    questions: list[dict]  # {question, answer, plan}


def _build_world(seed: int, n_writers: int) -> _World:
    rng = random.Random(seed)
    name = _namer(rng)
    n_countries = max(6, n_writers // 25)
    countries = [name((2, _COUNTRY_END)) for _ in range(n_countries)]
    per_country = max(3, n_writers // (6 * n_countries))
    cities = [(name((2, _CITY_END)), country) for country in countries for _ in range(per_country)]
    capital = {}
    for city, country in cities:
        capital.setdefault(country, city)
    writers = []
    for _ in range(n_writers):
        full = name((1, _FIRST_END), (2, _LAST_END))
        city, country = rng.choice(cities)
        writers.append({"name": full, "city": city, "country": country, "year": rng.randint(1850, 1990)})
    titles: set[str] = set()
    for w in writers:
        title = f"The {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
        while title in titles:
            title = f"The {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} of {name((2, _CITY_END))}"
        titles.add(title)
        w["book"] = title
        w["published"] = w["year"] + rng.randint(20, 60)

    facts = {
        "in_country": lambda c, k: f"{c} is a city in {k}.",
        "capital": lambda k, c: f"The capital of {k} is {c}.",
        "born": lambda w: f"{w['name']} is a writer born in {w['city']} in {w['year']}.",
        "wrote": lambda w: f"{w['book']} is a novel by {w['name']}.",
    }
    docs: dict[str, str] = {}
    for country in countries:
        docs[country] = (
            f"{country} is a country. {facts['capital'](country, capital[country])} "
            f"Its longest river is the {rng.choice(_RIVERS)}."
        )
    for city, country in cities:
        role = f"It is the capital of {country}. " if capital[country] == city else ""
        docs[city] = f"{facts['in_country'](city, country)} {role}It lies on the {rng.choice(_RIVERS)} river."
    for w in writers:
        docs[w["name"]] = f"{facts['born'](w)} {w['name']} wrote {w['book']}."
        docs[w["book"]] = f"{facts['wrote'](w)} It was first published in {w['published']}."

    def step(query: str, fact: str, think: str) -> dict:
        return {"tool": "search", "payload": query, "fact": fact, "think": think}

    questions = []
    for w in writers:
        questions.append(
            {
                "question": f"In which country was {w['name']} born?",
                "answer": w["country"],
                "plan": [
                    step(w["name"], facts["born"](w), f"Find where {w['name']} was born."),
                    step(
                        w["city"],
                        facts["in_country"](w["city"], w["country"]),
                        f"{w['name']} was born in {w['city']}. Find the country of {w['city']}.",
                    ),
                ],
            }
        )
        for asked, answer, finding in (("In which city", w["city"], "where"), ("In what year", str(w["year"]), "when")):
            questions.append(
                {
                    "question": f"{asked} was the author of {w['book']} born?",
                    "answer": answer,
                    "plan": [
                        step(w["book"], facts["wrote"](w), f"Find the author of {w['book']}."),
                        step(
                            w["name"],
                            facts["born"](w),
                            f"{w['book']} is by {w['name']}. Find {finding} {w['name']} was born.",
                        ),
                    ],
                }
            )
    for city, country in cities:
        if capital[country] != city:
            questions.append(
                {
                    "question": f"What is the capital of the country where {city} is located?",
                    "answer": capital[country],
                    "plan": [
                        step(city, facts["in_country"](city, country), f"Find the country of {city}."),
                        step(
                            country,
                            facts["capital"](country, capital[country]),
                            f"{city} is in {country}. Find the capital of {country}.",
                        ),
                    ],
                }
            )
    return _World(docs, questions)


def check_question(question: dict, docs: dict[str, str]) -> bool:
    """Each hop's fact is written in the document the hop looks up, and the last fact names the answer."""
    plan = question["plan"]
    return (
        all(step["fact"] in docs.get(step["payload"], "") for step in plan)
        and question["answer"] in plan[-1]["fact"]
    )


def _multihop(seed: int, num_train: int, num_val: int, system_prompt: str | None) -> TaskData:
    n_writers = _MIN_WRITERS
    while True:
        world = _build_world(seed, n_writers)
        questions = [q for q in world.questions if check_question(q, world.docs)]
        if len(questions) >= num_train + num_val:
            break
        n_writers *= 2
    random.Random(seed).shuffle(questions)
    held_out, train = questions[:num_val], questions[num_val : num_val + num_train]

    def rows(items: list[dict], split: str) -> list[dict]:
        return [
            _row(MULTIHOP_SOURCE, "qa", q["question"], q["answer"], i, split, system_prompt, q["plan"])
            for i, q in enumerate(items)
        ]

    corpus = [
        {"id": str(i), "title": title, "text": text} for i, (title, text) in enumerate(world.docs.items())
    ]
    return TaskData(rows(train, "train"), rows(held_out, "val"), corpus)


def _arithmetic(seed: int, num_train: int, num_val: int, system_prompt: str | None) -> TaskData:
    held_out = _unique_arithmetic(seed + _HELD_OUT_SEED_OFFSET, num_val, set())
    train = _unique_arithmetic(seed, num_train, {e["question"] for e in held_out})
    return TaskData(
        _arithmetic_rows(train, "train", system_prompt), _arithmetic_rows(held_out, "val", system_prompt)
    )


def build_task(
    name: str,
    num_train: int,
    num_val: int,
    seed: int = 1,
    multihop_fraction: float = 0.5,
    system_prompt: str | None = QUICKSTART_SYSTEM_PROMPT,
) -> TaskData:
    """Rows of a built-in task (`quickstart`, `arithmetic`, `multihop`, `study`), identical for identical
    arguments."""
    if name == "arithmetic":
        return _arithmetic(seed, num_train, num_val, system_prompt)
    if name == "multihop":
        return _multihop(seed, num_train, num_val, system_prompt)
    if name == "study":
        from appo.data.study_task import build_study  # it builds on this module's name generator

        return build_study(seed, num_train, num_val, system_prompt)
    if name != "quickstart":
        raise ValueError(f"unknown built-in task '{name}'; choose one of: {', '.join(TASKS)}")
    if not 0.0 <= multihop_fraction <= 1.0:
        raise ValueError(f"multihop_fraction={multihop_fraction} must be within [0, 1]")
    n_train_mh, n_val_mh = round(num_train * multihop_fraction), round(num_val * multihop_fraction)
    mh = _multihop(seed, n_train_mh, n_val_mh, system_prompt)
    ar = _arithmetic(seed, num_train - n_train_mh, num_val - n_val_mh, system_prompt)
    rng = random.Random(seed)
    train, val = ar.train + mh.train, ar.val + mh.val
    rng.shuffle(train)
    rng.shuffle(val)
    for split_rows in (train, val):
        for i, row in enumerate(split_rows):
            row["extra_info"]["index"] = i
    return TaskData(train, val, mh.corpus)


def task_from_config(data_cfg) -> TaskData:
    """The built-in task `data.task` with the config's sizes, seed and mix."""
    return build_task(
        data_cfg.task, data_cfg.num_train, data_cfg.num_val, data_cfg.seed, data_cfg.multihop_fraction
    )
