"""A model directory whose safetensors header lies about its data (offsets past the end, a dtype or shape
that does not fit the bytes, an unknown dtype, a header longer than the file or nested too deeply, a shape
that differs from config.json): one UserError naming the file (and tensor), so `appo eval/train` print one
line with exit 2 instead of a SafetensorError / RuntimeError traceback."""

from __future__ import annotations

import json
import shutil
import struct

import pytest

from appo.errors import UserError
from appo.models import load_model
from tests.unit.appo_cli import run_appo


def _header(path):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _write(path, header: dict | bytes, data: bytes, length: int | None = None) -> None:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    path.write_bytes(struct.pack("<Q", len(body) if length is None else length) + body + data)


def _first(h: dict) -> str:
    return next(k for k in sorted(h) if k != "__metadata__")


def _lie(kind: str, h: dict, data: bytes, path) -> str | None:
    """Tamper with the file; returns the tensor name the message should carry (None: the file as a whole)."""
    name = _first(h)
    if kind == "header_longer_than_file":
        _write(path, h, data, length=1 << 40)
    elif kind == "offset_past_end":
        h[name]["data_offsets"][1] += 1 << 20
        _write(path, h, data)
    elif kind == "dtype_does_not_fit":
        h[name]["dtype"] = "F16" if h[name]["dtype"] == "F32" else "F32"
        _write(path, h, data)
    elif kind == "unknown_dtype":
        h[name]["dtype"] = "X99"
        _write(path, h, data)
    elif kind == "data_cut_short":
        _write(path, h, data[: len(data) // 2])
    elif kind == "header_nested_deep":
        _write(path, ('{"a":' + "[" * 10_000 + "]" * 10_000 + "}").encode(), data)
    elif kind == "shape_differs_from_config":
        name = "model.norm.weight"
        h[name]["shape"] = [h[name]["shape"][0] // 2, 2]   # the same bytes, another shape
        _write(path, h, data)
        return name
    return None


KINDS = ["header_longer_than_file", "offset_past_end", "dtype_does_not_fit", "unknown_dtype", "data_cut_short",
         "header_nested_deep", "shape_differs_from_config"]


@pytest.fixture()
def lying_model(tiny_model_dir, tmp_path, request):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    path = model / "model.safetensors"
    h, data = _header(path)
    return model, path, _lie(request.param, h, data, path)


@pytest.mark.parametrize("lying_model", KINDS, indirect=True)
def test_a_lying_safetensors_header_is_one_error_naming_the_file(lying_model):
    model, path, tensor = lying_model
    with pytest.raises(UserError) as err:
        load_model(str(model))
    assert str(path) in str(err.value)
    if tensor:
        assert tensor in str(err.value) and "config.json" in str(err.value)


@pytest.mark.parametrize("lying_model", ["offset_past_end", "shape_differs_from_config"], indirect=True)
def test_eval_of_a_lying_checkpoint_is_one_line(lying_model, tmp_path):
    model, path, _ = lying_model
    bench = tmp_path / "b.jsonl"
    bench.write_text(json.dumps({"question": "What is 1 + 1?", "answer": "2"}) + "\n")
    proc = run_appo("eval", "tiny", "--model", str(model), "--benchmarks", str(bench), "--output-dir",
                    str(tmp_path / "out"), "--no-progress", "tools.enabled=[python]", "data.max_prompt_length=2048",
                    cwd=tmp_path, timeout=300)
    # (eval logs its start-up lines before it loads the model; the error is the last line)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("appo eval: ") and str(path) in last, proc.stderr[-3000:]
