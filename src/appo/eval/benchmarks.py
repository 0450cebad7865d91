"""Benchmark files: resolving names or paths to files, and reading their rows.

A benchmark is a `<data_root>/<name>/test.jsonl` (the reference layout), or any file `appo.data.load_rows`
reads, given by path (GAIA, HLE, xbench and private sets come this way). Rows are {question, answer} with
the reference's per-benchmark variants, or the training (verl) schema; `appo.data.build_prompts` turns
them into prompts exactly as for training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appo.data.datasets import load_rows, source_name
from appo.errors import UserError
from appo.prompts import MATH_SOURCES

_REPO_SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "benchmarks"


class BenchmarkError(UserError):
    """A benchmark name or file that cannot be used; the message says what is available."""


@dataclass
class Benchmark:
    name: str
    path: Path
    kind: str                 # "math" (math equivalence) or "qa" (EM/F1)
    rows: list[dict]          # as read from the file


def default_data_root(configured: str | None = None) -> Path | None:
    if configured:
        return Path(configured).expanduser()
    for candidate in (Path.cwd().parent / "shared" / "data" / "benchmarks", _REPO_SHARED):
        if candidate.is_dir():
            return candidate
    return None


def available(data_root: Path | None) -> list[str]:
    if data_root is None or not data_root.is_dir():
        return []
    return sorted(p.parent.name for p in data_root.glob("*/test.jsonl"))


def resolve(spec: str, data_root: Path | None) -> tuple[str, Path]:
    """(name, file) for a benchmark name under `data_root` or a path to a file or a folder with test.jsonl."""
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "test.jsonl").is_file():
        return path.name, path / "test.jsonl"
    if path.is_file():
        return source_name(path), path
    names = available(data_root)
    match = [n for n in names if n.lower() == spec.lower()]
    if match:
        return match[0], data_root / match[0] / "test.jsonl"
    where = f"under {data_root}" if data_root else "(no data root: pass --data-root or eval.data_root)"
    raise BenchmarkError(f"benchmark '{spec}' is neither a file nor a known name {where}; "
                         f"available: {', '.join(names) or 'none'}")


def kind_of(name: str) -> str:
    """The reference's split: math sets are graded by math equivalence, everything else as QA."""
    return "math" if name.lower() in MATH_SOURCES else "qa"


def load_benchmark(spec: str, data_root: Path | None, max_samples: int | None = None) -> Benchmark:
    name, path = resolve(spec, data_root)
    rows = load_rows(path)
    if not rows:
        raise BenchmarkError(f"benchmark '{name}': {path} has no rows")
    if max_samples is not None:
        rows = rows[:max_samples]
    return Benchmark(name=name, path=path, kind=kind_of(name), rows=rows)
