"""Checkpoints: a Hugging Face directory that `from_pretrained` loads (LoRA merged in), plus the trainer
state that makes `--resume` continue exactly (optimizer, scheduler, RNG streams, position, history).

Layout: `<output_dir>/checkpoints/step_<N>/{hf/, trainer_state.pt}` (hf/ holds `appo_prompt.json`, the
training system prompt, beside the weights) and `<output_dir>/checkpoints/latest`
(the name of the newest complete checkpoint, written last, so a kill mid-save never points at a torn one).

`trainer_state.pt` holds only tensors and plain containers (dict, list, tuple, str, int, float, bool, None)
and is read with `torch.load(weights_only=True)`, which builds nothing else: a tampered file cannot run code
on `--resume`. numpy's RNG state is therefore stored as a tensor, not as the ndarray numpy returns.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from appo.data.templates import common_system_prompt, with_default_system, write_prompt_format
from appo.errors import UserError
from appo.models import merged_state_dict

# Recorded in every trainer state written since the state stopped needing the full unpickler.
STATE_FORMAT = 2


class CheckpointError(UserError):
    """A checkpoint that `--resume` cannot continue from, or cannot be saved; the message names the file."""


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def save_hf(model, tokenizer, out_dir: str | Path, state_dict: dict[str, torch.Tensor] | None = None,
            trained_on: list[list[dict]] | None = None, tool_names: tuple[str, ...] = (),
            tool_format: str = "tags") -> Path:
    """Save a loadable Hugging Face checkpoint (adapters merged) with its tokenizer. `state_dict` gives the
    weights when the module's own are sharded (FSDP2: the full state dict gathered to rank 0).

    `trained_on` (the message lists the model was trained with) records the prompt format: the system
    prompt goes to `appo_prompt.json` (with the tags of the protocol and of `tool_names`) and becomes the chat template's default system turn, so that
    transformers, vLLM and `appo eval` prompt the model as it was trained without being told."""
    out = Path(out_dir)
    if state_dict is not None:
        model.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
    elif hasattr(model, "peft_config"):
        model.get_base_model().save_pretrained(out, state_dict=merged_state_dict(model), safe_serialization=True)
    else:
        model.save_pretrained(out, safe_serialization=True)
    system = common_system_prompt(trained_on) if trained_on is not None else None
    original = tokenizer.chat_template
    if system is not None and original:
        tokenizer.chat_template = with_default_system(original, system)
    try:
        tokenizer.save_pretrained(out)
    finally:
        tokenizer.chat_template = original
    if trained_on is not None:
        write_prompt_format(out, system, tool_names, tool_format)
    return out


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: str | Path, step: int, model, tokenizer, trainer_state: dict[str, Any],
                    keep_last: int | None = None, state_dict: dict[str, torch.Tensor] | None = None,
                    trained_on: list[list[dict]] | None = None, tool_names: tuple[str, ...] = (),
                    tool_format: str = "tags") -> Path:
    """Write step_<step>/ (HF dir + trainer_state.pt) atomically and point `latest` at it; `state_dict`
    and `trained_on` as in `save_hf`."""
    root = checkpoint_root(output_dir)
    final = root / f"step_{step}"
    tmp = root / f".step_{step}.tmp"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        save_hf(model, tokenizer, tmp / "hf", state_dict, trained_on, tool_names, tool_format)
        state = dict(trainer_state, step=step, rng=rng_state(), format=STATE_FORMAT)
        if hasattr(model, "peft_config"):
            from peft import get_peft_model_state_dict

            state["adapter"] = {k: v.detach().cpu() for k, v in get_peft_model_state_dict(model).items()}
        _write_state(state, tmp / "trainer_state.pt")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = root / "latest.tmp"
        pointer.write_text(final.name)
        os.replace(pointer, root / "latest")
    except OSError as e:
        # Disk full (or unwritable) mid-save: nothing written so far replaced anything, so say what is intact.
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            (root / "latest.tmp").unlink(missing_ok=True)
        kept = latest_checkpoint(output_dir)
        intact = (f"the last complete checkpoint, {kept.name}, and the `latest` pointer are unchanged" if kept
                  else "no earlier checkpoint exists")
        reason = e.strerror or type(e).__name__
        raise CheckpointError(f"{root}: cannot save checkpoint step_{step} ({reason}); the partial copy was "
                              f"removed and {intact}") from None
    if keep_last:
        steps = sorted((int(p.name.split("_")[1]) for p in root.glob("step_*")), reverse=True)
        for old in steps[keep_last:]:
            shutil.rmtree(root / f"step_{old}", ignore_errors=True)
    return final


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None (no pointer, or one naming a step that is gone)."""
    pointer = checkpoint_root(output_dir) / "latest"
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if (path / "trainer_state.pt").exists() else None


def resume_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint `--resume` continues from: None when the run never saved one (it starts at step 1);
    an error when the `latest` pointer names a step that is missing or torn, since starting over would
    silently discard the run and its metrics."""
    pointer = checkpoint_root(output_dir) / "latest"
    if not pointer.exists():
        return None
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{pointer}: cannot read the checkpoint pointer ({e})") from None
    path = pointer.parent / name
    if not name or "/" in name or not (path / "trainer_state.pt").is_file():
        raise CheckpointError(f"{pointer} points at '{name}', but {path / 'trainer_state.pt'} does not exist; "
                              f"restore that checkpoint, point {pointer.name} at an existing step_N, or start "
                              f"a new run without --resume")
    return path


def _write_state(state: dict[str, Any], path: Path) -> None:
    torch.save(state, path)


# The keys every trainer state has, with their types; the rest (learner, adapter, history) is checked by
# whoever uses it.
_REQUIRED = {"step": int, "learner": dict, "rng": dict}
_RNG_KEYS = ("python", "numpy", "torch")


def load_trainer_state(ckpt_dir: str | Path) -> dict[str, Any]:
    """The trainer state, loaded without running code; CheckpointError (one line naming the file) when it
    is torn, tampered with, written by an appo before STATE_FORMAT, or not a trainer state at all."""
    path = Path(ckpt_dir) / "trainer_state.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # weights_only refuses any other type before building it: a pickle payload never runs here.
        raise CheckpointError(
            f"{path}: holds objects other than tensors and plain values, so it was not loaded (loading it "
            f"could run code): a checkpoint written by an older appo, or a tampered file. Resume is not "
            f"possible from it; start a new run from its weights with model.path={Path(ckpt_dir) / 'hf'}"
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        detail = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(f"{path}: cannot load the trainer state ({type(e).__name__}: {detail})") from None
    problem = _structure_problem(state)
    if problem:
        raise CheckpointError(f"{path}: not a trainer state appo wrote ({problem}); restore the file or "
                              f"start a new run from its weights with model.path={Path(ckpt_dir) / 'hf'}")
    return state


def _structure_problem(state: Any) -> str | None:
    if not isinstance(state, dict):
        return f"a {type(state).__name__}, not a dict"
    for key, kind in _REQUIRED.items():
        if key not in state:
            return f"no '{key}' entry"
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            return f"'{key}' is a {type(state[key]).__name__}, not a {kind.__name__}"
    missing = [k for k in _RNG_KEYS if k not in state["rng"]]
    if missing:
        return f"'rng' lacks {', '.join(missing)}"
    if not isinstance(state["rng"]["numpy"], dict):
        return "'rng' holds numpy's state in the format of an older appo"
    return None
