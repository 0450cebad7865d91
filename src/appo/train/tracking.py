"""Where metrics go: JSONL, TensorBoard, wandb and the console, behind one small `Tracker`.

The JSONL file is the source of truth (the report and resume read it); the others are views.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from appo.errors import UserError
from appo.files import replace_file

CONSOLE_KEYS = ("reward/mean", "reward/accuracy", "rollout/tool_calls_mean", "rollout/response_length_mean",
                "actor/pg_loss", "actor/grad_norm", "time/step")


def check_loggers(loggers: list[str]) -> None:
    """Refuse at start-up a logger whose package is missing (rather than after SFT, when the tracker opens)."""
    import importlib.util

    from appo.errors import UserError

    for name, install in (("wandb", "pip install 'appo[wandb]'"), ("tensorboard", "pip install tensorboard")):
        if name in loggers and importlib.util.find_spec(name) is None:
            raise UserError(f"trainer.loggers includes '{name}' but {name} is not installed: {install} (or drop "
                            f"{name} from trainer.loggers)")


class Tracker:
    """Fan metrics out to the enabled loggers; `resume_step` truncates history written after a checkpoint."""

    def __init__(self, output_dir: str | Path, loggers: list[str], experiment_name: str = "appo",
                 config: dict | None = None, resume_step: int | None = None, project: str | None = None):
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.loggers = list(loggers)
        self.metrics_path = self.dir / "metrics.jsonl"
        self._tb = None
        self._wandb = None
        if "jsonl" in self.loggers:
            kept = [] if resume_step is None else [
                r for r in read_metrics(self.metrics_path) if r.get("step", 0) <= resume_step]
            _replace_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        if "tensorboard" in self.loggers:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.dir / "tensorboard"),
                                     purge_step=None if resume_step is None else resume_step + 1)
        if "wandb" in self.loggers:
            try:
                import wandb
            except ImportError:
                check_loggers(["wandb"])
                raise
            # The API key comes from WANDB_API_KEY or `wandb login`, never from our config.
            self._wandb = wandb.init(project=project or os.environ.get("WANDB_PROJECT", "appo"), name=experiment_name,
                                     config=config or {}, dir=str(self.dir), resume="allow")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        clean = {k: _plain(v) for k, v in metrics.items()}
        if "jsonl" in self.loggers:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps({"step": step, **clean}) + "\n")
        numeric = {k: v for k, v in clean.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)
        if "console" in self.loggers:
            shown = " ".join(f"{k.split('/')[-1]}={numeric[k]:.4g}" for k in CONSOLE_KEYS if k in numeric)
            print(f"[appo] step {step}: {shown}", flush=True)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def open_tensorboard(output_dir: str | Path, loggers: list[str]):
    """A TensorBoard writer into <output_dir>/tensorboard, the folder every stage (SFT, evaluations, RL) logs
    to, when `loggers` (trainer.loggers) has tensorboard; else None."""
    if "tensorboard" not in loggers:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"))


def log_evaluation(output_dir: str | Path, loggers: list[str], name: str, summary: dict, step: int) -> None:
    """A stage's evaluation summary as `eval/<name>/<metric>` scalars at `step` (the RL steps before it)."""
    board = open_tensorboard(output_dir, loggers)
    if board is None:
        return
    with board:
        for key, value in summary.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                board.add_scalar(f"eval/{name}/{key}", value, step)


def _replace_text(path: Path, text: str) -> None:
    """Rewrite the history whole or not at all (a kill or a full disk mid-write leaves the old one)."""
    try:
        replace_file(path, [text])
    except OSError as e:
        raise UserError(f"{path}: cannot rewrite the metrics history ({e.strerror or e}); "
                        "the file is unchanged") from None


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl. A last line without its newline that does not parse is a write the
    process did not finish (killed, disk full): it is dropped. Any other bad line is a UserError naming it."""
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
            if not isinstance(row, dict):
                raise ValueError(f"a JSON {type(row).__name__}, not an object")
        except (ValueError, RecursionError) as e:
            if number == len(lines):  # no newline after it: torn by a write cut short
                break
            reason = "nested too deeply" if isinstance(e, RecursionError) else str(e).splitlines()[0][:120]
            raise UserError(f"{path}:{number}: not a metrics row ({reason}); delete or repair that line") from None
        rows.append(row)
    return rows


def _plain(v: Any) -> Any:
    """JSON-safe scalars: tensors and numpy numbers become floats; NaN/inf become None."""
    if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
