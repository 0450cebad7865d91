"""A training step's rollout dump (`step_N.jsonl`), written whole or not at all, so a full disk or a kill
never leaves a torn dump."""

from __future__ import annotations

import json
from pathlib import Path

from appo.errors import UserError
from appo.files import replace_file


def write_rollout_dump(path: Path, records: list[dict], step: int) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(path, (json.dumps(record) + "\n" for record in records))
    except OSError as e:
        # The dump comes before the step's metrics and checkpoint, so the run stops with all three in step.
        raise UserError(f"{path}: cannot write the rollouts of step {step} ({e.strerror or e}); the run stopped "
                        f"before logging step {step}, no partial dump was kept, and metrics.jsonl and the "
                        "checkpoints are consistent at the last saved step: free space and continue with "
                        "--resume") from None
