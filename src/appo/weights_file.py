"""The safetensors files of a model directory, checked before transformers loads them: a header that lies
about its data (offsets past the end or overlapping, a dtype or shape that does not fit the bytes, an
unknown dtype, a header longer than the file) or a tensor whose shape differs from what config.json builds
is one `UserError` naming the file (and tensor) instead of a SafetensorError / RuntimeError traceback.

Only headers are read (the safetensors library validates each against the file's size), and the model is
built on the meta device for its shapes, so the check costs no weight memory."""

from __future__ import annotations

from pathlib import Path

from appo.errors import UserError


def check_safetensors(model_dir: str | Path) -> None:
    from safetensors import SafetensorError, safe_open

    shapes: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                    shapes[key] = (path, tuple(f.get_slice(key).get_shape()))
        except (SafetensorError, OSError) as e:
            reason = (str(e).strip().splitlines() or [""])[0].removeprefix("Error while deserializing header: ")
            raise UserError(f"{path}: not a loadable safetensors file: its header does not match its data "
                            f"({reason[:200]}); re-save or re-download the checkpoint") from None
    if not shapes:
        return
    expected = _model_shapes(Path(model_dir))
    for key, (path, shape) in shapes.items():
        if key in expected and expected[key] != shape:
            raise UserError(f"{path}: tensor {key} has shape {list(shape)} but the model that config.json "
                            f"describes needs {list(expected[key])}")


def _model_shapes(model_dir: Path) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of the causal LM in config.json; empty when transformers cannot build it
    (from_pretrained then reports that itself)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(model_dir)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001 (any failure here is from_pretrained's to report, as before)
        return {}
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}
