"""JSON read from files that a user, or a policy being trained, may have written: every way such a file can
be unreadable (bad syntax or encoding, nesting deeper than the parser's recursion, an integer over Python's
4,300-digit limit) becomes one `UserError` naming the file (and line), never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from appo.errors import UserError


def parse_json(text: str | bytes, where: str, error: type[UserError] = UserError) -> Any:
    """`json.loads(text)`; `where` ("FILE" or "FILE: line N") starts the message of the `error` raised."""
    try:
        return json.loads(text)
    except RecursionError:
        raise error(f"{where}: JSON nested too deeply to read") from None
    except UnicodeDecodeError as e:
        raise error(f"{where}: not UTF-8 text (byte {e.start})") from None
    except ValueError as e:  # JSONDecodeError, and int() refusing a number of more than 4,300 digits
        raise error(f"{where}: not valid JSON ({str(e).split(';')[0]})") from None


def read_json(path: str | Path, error: type[UserError] = UserError) -> Any:
    """The JSON document in the file at `path`."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from None
    return parse_json(data, str(path), error)


def read_json_object(path: str | Path, error: type[UserError] = UserError) -> dict:
    """The file's JSON document, which must be an object."""
    data = read_json(path, error)
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, found a {type(data).__name__}")
    return data
