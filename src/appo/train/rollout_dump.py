"""A training step's rollout dump (`step_N.jsonl`), written whole or not at all: the rows go to a file
beside it, are synced, and only then renamed over it, so a full disk or a kill never leaves a torn dump."""

from __future__ import annotations

import json
import os
from pathlib import Path

from appo.errors import UserError


def write_rollout_dump(path: Path, records: list[dict], step: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        # The dump comes before the step's metrics and checkpoint, so the run stops with all three in step.
        raise UserError(f"{path}: cannot write the rollouts of step {step} ({e.strerror or e}); the run stopped "
                        f"before logging step {step}, no partial dump was kept, and metrics.jsonl and the "
                        "checkpoints are consistent at the last saved step: free space and continue with "
                        "--resume") from None
