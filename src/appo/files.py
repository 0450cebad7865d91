"""Writing a file whole or not at all."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def replace_file(path: Path, chunks: Iterable[str]) -> None:
    """Write `chunks` to a file beside `path`, sync it and rename it over `path`: a kill or a full disk
    mid-write leaves `path` as it was (the rename is atomic) instead of cut short. An OSError removes the
    file beside it and propagates, for the caller to say what was kept."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
