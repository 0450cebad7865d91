"""Generate the `kv_store` example's data: rows whose store holds a few items, a question that asks to
copy one key's value to a new key, and cold-start SFT traces that do it with the real tools.

    python examples/kv_store/make_data.py      # writes examples/kv_store/data/{train,val,sft}.jsonl
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from kv_env import KeyValueStore  # noqa: E402

from appo.tool_format import RESULT_TEMPLATE, escape_tags  # noqa: E402

KEYS = ("apple", "river", "stone", "cloud", "tiger", "maple", "ember", "frost")
TOOL_NAMES = ["get", "put"]
P_WRONG = 0.25


def make_row(rng: random.Random) -> dict:
    keys = rng.sample(KEYS, 4)
    initial = {k: str(rng.randint(10, 99)) for k in keys[:3]}
    source, dest = keys[0], keys[3]
    return {"question": f"Copy the value of '{source}' to the new key '{dest}', then answer with that value.",
            "answer": initial[source], "initial": initial, "target": {dest: initial[source]},
            "source": source, "dest": dest, "data_source": "kv_store"}


def make_trace(row: dict, system_prompt: str, rng: random.Random) -> dict:
    env = KeyValueStore()
    env.setup(row["initial"], row["target"])
    # a flawed trace reads a neighbouring key (a real read of the wrong item) and copies that
    wrong = rng.random() < P_WRONG
    read = next(k for k in row["initial"] if k != row["source"]) if wrong else row["source"]
    segments = []
    value = env.get(read)
    for text, output in ((f"<think>Read {read}.</think><get>{read}</get>", value),
                         (f'<think>Write it to {row["dest"]}.</think><put>{{"key": "{row["dest"]}", '
                          f'"value": "{value}"}}</put>', None)):
        output = output if output is not None else env.put(row["dest"], value)
        segments.append({"text": text, "train": True})
        segments.append({"text": RESULT_TEMPLATE.format(text=escape_tags(output, TOOL_NAMES)), "train": False,
                         "tool_output": output})
    segments.append({"text": f"<answer>\\boxed{{{value}}}</answer>", "train": True})
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": row["question"]},
                {"role": "assistant", "content": "".join(s["text"] for s in segments)}]
    return {"messages": messages, "segments": segments, "variant": "wrong" if wrong else "tool",
            "tool_names": TOOL_NAMES}


def main() -> None:
    system_prompt = yaml.safe_load((HERE / "config.yaml").read_text())["data"]["system_prompt"]
    rng = random.Random(0)
    train = [make_row(rng) for _ in range(200)]
    val = [make_row(rng) for _ in range(50)]
    traces = [make_trace(row, system_prompt, rng) for row in train[:80]]
    (HERE / "data").mkdir(exist_ok=True)
    for name, rows in {"train": train, "val": val, "sft": traces}.items():
        path = HERE / "data" / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        print(f"{path}: {len(rows)} rows")

if __name__ == "__main__":
    main()
