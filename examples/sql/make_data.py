"""Generate the `sql` example's data: questions over per-row generated databases, and cold-start SFT traces
with real tool results, some flawed on purpose (as the quickstart's traces are).

    python examples/sql/make_data.py            # writes examples/sql/data/{train,val,sft}.jsonl

Each row is {question, answer, db_seed}: `db_seed` builds the row's database (sql_env.build_database) and
the answer is computed by running the solving query on it. Train and held-out rows use disjoint seeds.
A trace runs its query through the environment's real `query` tool and answers with what came back;
`P_WRONG` of them query with a slip (another department or city, MIN for MAX) and so answer wrongly, and
`P_GUESS` answer without a query: the SFT policy is imperfect, and RL has something to fix.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from sql_env import CITIES, DEPARTMENTS, SqlDatabase, build_database  # noqa: E402

from appo.tool_format import RESULT_TEMPLATE, escape_tags  # noqa: E402

P_WRONG, P_GUESS = 0.25, 0.15
NUM_TRAIN, NUM_VAL, NUM_SFT = 400, 100, 160
TOOL_NAMES = list(SqlDatabase.tools)


def _questions(rng: random.Random) -> list[tuple[str, str, str, str]]:
    """(question, solving SQL, a flawed SQL, thought) candidates for one database."""
    dept, other_dept = rng.sample(DEPARTMENTS, 2)
    city, other_city = rng.sample(CITIES, 2)
    limit = 10 * rng.randint(5, 10) * 10
    return [
        (f"How many employees work in {dept}?", f"SELECT COUNT(*) FROM employees WHERE dept = '{dept}'",
         f"SELECT COUNT(*) FROM employees WHERE dept = '{other_dept}'", f"Count the {dept} rows."),
        (f"What is the highest salary in {city}?", f"SELECT MAX(salary) FROM employees WHERE city = '{city}'",
         f"SELECT MIN(salary) FROM employees WHERE city = '{city}'", f"Take the maximum salary in {city}."),
        (f"Who earns the most in {dept}?",
         f"SELECT name FROM employees WHERE dept = '{dept}' ORDER BY salary DESC LIMIT 1",
         f"SELECT name FROM employees WHERE dept = '{other_dept}' ORDER BY salary DESC LIMIT 1",
         f"Sort {dept} by salary."),
        (f"What is the total salary paid in {city}?", f"SELECT SUM(salary) FROM employees WHERE city = '{city}'",
         f"SELECT SUM(salary) FROM employees WHERE city = '{other_city}'", f"Sum the salaries in {city}."),
        (f"How many employees earn more than {limit}?", f"SELECT COUNT(*) FROM employees WHERE salary > {limit}",
         f"SELECT COUNT(*) FROM employees WHERE salary < {limit}", f"Count salaries above {limit}."),
    ]


def _answer(conn, sql: str) -> str | None:
    """The single value `sql` returns, or None when it is not one well-defined value (no rows, NULL, a tie)."""
    rows = conn.execute(sql.replace("LIMIT 1", "LIMIT 2")).fetchall()
    if not rows or rows[0][0] is None:
        return None
    if "LIMIT 1" in sql:
        salaries = conn.execute(sql.replace("SELECT name", "SELECT salary").replace("LIMIT 1", "LIMIT 2")).fetchall()
        if len(salaries) > 1 and salaries[0][0] == salaries[1][0]:
            return None
    return str(rows[0][0])


def make_rows(n: int, first_seed: int, rng: random.Random) -> list[dict]:
    rows, seed = [], first_seed
    while len(rows) < n:
        conn = build_database(seed)
        question, sql, wrong, think = rng.choice(_questions(random.Random(seed)))
        answer = _answer(conn, sql)
        if answer is not None:
            rows.append({"question": question, "answer": answer, "db_seed": seed, "data_source": "sql",
                         "sql": sql, "wrong_sql": wrong, "think": think})
        conn.close()
        seed += 1
    return rows


def make_trace(row: dict, system_prompt: str, rng: random.Random) -> dict:
    draw = rng.random()
    segments = []
    if draw < P_GUESS:
        variant = "guess"
        answer = str(rng.randint(1, 9))
        segments.append({"text": "<think>I can guess this.</think>", "train": True})
    else:
        variant = "wrong" if draw < P_GUESS + P_WRONG else "tool"
        sql = row["wrong_sql"] if variant == "wrong" else row["sql"]
        env = SqlDatabase()
        env.setup(row["db_seed"])
        output = env.query(sql)  # the real tool, on the row's own database
        env.close()
        answer = output.split("\n")[0]
        segments.append({"text": f"<think>{row['think']}</think><query>{sql}</query>", "train": True})
        segments.append({"text": RESULT_TEMPLATE.format(text=escape_tags(output, TOOL_NAMES)), "train": False,
                         "tool_output": output})
    segments.append({"text": f"<answer>\\boxed{{{answer}}}</answer>", "train": True})
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": row["question"]},
                {"role": "assistant", "content": "".join(s["text"] for s in segments)}]
    return {"messages": messages, "segments": segments, "variant": variant, "tool_names": TOOL_NAMES}


def main() -> None:
    system_prompt = yaml.safe_load((HERE / "config.yaml").read_text())["data"]["system_prompt"]
    rng = random.Random(0)
    train = make_rows(NUM_TRAIN, 1, rng)
    val = make_rows(NUM_VAL, 1_000_000, rng)
    traces = [make_trace(row, system_prompt, rng) for row in train[:NUM_SFT]]
    out = HERE / "data"
    out.mkdir(exist_ok=True)
    # the solving queries were only for the traces; the model sees the question, the environment db_seed
    train, val = ([{k: r[k] for k in ("question", "answer", "db_seed", "data_source")} for r in rows]
                  for rows in (train, val))
    for name, rows in (("train", train), ("val", val), ("sft", traces)):
        with (out / f"{name}.jsonl").open("w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        print(f"{out / name}.jsonl: {len(rows)} rows")


if __name__ == "__main__":
    main()
