"""Turn a verl FSDP checkpoint into a Hugging Face directory (`appo convert --from verl-fsdp`).

What verl's FSDPCheckpointManager leaves on disk (0.3.x, which the APPO/ARPO forks use, up to 0.7):

    <default_local_dir>/latest_checkpointed_iteration.txt   the last saved step N
    <default_local_dir>/global_step_N/actor/
        model_world_size_W_rank_R.pt        one file per rank: {parameter name: DTensor}. A rank holds its
                                            torch.chunk piece of dim 0 (trailing ranks may hold empty pieces),
                                            placed [Shard(0)] on a ("fsdp",) mesh, or [Replicate(), Shard(0)]
                                            on a hybrid ("ddp", "fsdp") mesh, where each ddp row of ranks
                                            holds one whole copy
        optim_world_size_W_rank_R.pt        optimizer and scheduler/RNG state: not needed for the weights
        extra_state_world_size_W_rank_R.pt
        fsdp_config.json                    {"FSDP_version": 1|2, "world_size": W}, from verl 0.4.1 on
        huggingface/                        config.json and the tokenizer; generation_config.json from 0.4

verl keeps the actor's master weights in float32 (its merger casts them to bfloat16); here they keep the
dtype they were saved in unless another is asked for. Shards load with `weights_only=True` (tensors and
DTensor metadata only) unless the caller trusts the files' pickles.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from appo.errors import UserError
from appo.json_input import read_json_object

log = logging.getLogger(__name__)

SHARD_NAME = re.compile(r"model_world_size_(\d+)_rank_(\d+)\.pt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# Files of huggingface/ that the conversion writes itself (or that would shadow the converted weights).
NOT_COPIED = re.compile(r"config\.json|.*\.(safetensors|bin|pt|pth)|.*\.index\.json")
DTYPES = ("float32", "bfloat16", "float16")


class ConvertError(UserError):
    """The folder is not a verl FSDP save this converter understands; the message names the file and why."""


@dataclass
class ConvertResult:
    out_dir: Path
    actor_dir: Path
    world_size: int
    tensors: int
    dtype: str
    tokenizer_copied: bool
    warnings: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ the layout


def find_actor_dir(path: str | Path) -> Path:
    """The folder holding the model shards: `path` itself, its `actor/`, or the latest step's `actor/`."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ConvertError(f"{root}: no such directory")
    for candidate in (root, root / "actor"):
        if candidate.is_dir() and any(SHARD_NAME.fullmatch(p.name) for p in candidate.iterdir()):
            return candidate
    latest = root / "latest_checkpointed_iteration.txt"
    if latest.is_file():
        step = latest.read_text().strip()
        actor = root / f"global_step_{step}" / "actor"
        if not actor.is_dir():
            raise ConvertError(f"{latest} names step {step!r} but {actor} does not exist")
        return actor
    raise ConvertError(f"{root}: no verl FSDP model shards (model_world_size_W_rank_R.pt) here, in actor/, or "
                       "under the step named by latest_checkpointed_iteration.txt")


def shard_layout(actor_dir: Path) -> tuple[int, list[Path]]:
    """(world size, the model shard of every rank in rank order), after checking the set is complete."""
    found: dict[int, dict[int, Path]] = {}
    for p in sorted(actor_dir.iterdir()):
        if m := SHARD_NAME.fullmatch(p.name):
            found.setdefault(int(m[1]), {})[int(m[2])] = p
    if not found:
        raise ConvertError(f"{actor_dir}: no model_world_size_W_rank_R.pt shards")
    if len(found) > 1:
        sizes = "; ".join(f"world size {w}: {len(r)} file(s)" for w, r in sorted(found.items()))
        raise ConvertError(f"{actor_dir}: shards of different world sizes are mixed ({sizes}); keep one save")
    world, ranks = next(iter(found.items()))
    declared = _declared_world_size(actor_dir)
    if declared is not None and declared != world:
        raise ConvertError(f"{actor_dir / 'fsdp_config.json'}: world_size is {declared} but the shards are "
                           f"model_world_size_{world}_rank_*.pt")
    outside = sorted(r for r in ranks if r >= world)
    if outside:
        raise ConvertError(f"{ranks[outside[0]]}: rank {outside[0]} is outside world size {world}")
    missing = [r for r in range(world) if r not in ranks]
    if missing:
        raise ConvertError(f"{actor_dir}: missing model_world_size_{world}_rank_{missing[0]}.pt "
                           f"({len(missing)} of {world} rank shard(s) absent: {', '.join(map(str, missing))})")
    return world, [ranks[r] for r in range(world)]


def _declared_world_size(actor_dir: Path) -> int | None:
    path = actor_dir / "fsdp_config.json"
    if not path.is_file():
        return None
    world = read_json_object(path, ConvertError).get("world_size")
    if not isinstance(world, int) or world < 1:
        raise ConvertError(f"{path}: world_size must be a positive integer, got {world!r}")
    return world


def load_shard(path: Path, trust_pickle: bool = False) -> dict:
    """One rank's {name: tensor or DTensor}; anything else is named as what it is."""
    import pickle

    import torch
    import torch.distributed.tensor  # noqa: F401  (registers DTensor and its mesh for weights_only loading)

    # Unpickling a DeviceMesh outside its process group logs a warning per tensor; the mesh is only read here.
    mesh_log = logging.getLogger("torch.distributed.device_mesh")
    level = mesh_log.level
    mesh_log.setLevel(logging.ERROR)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        if found := re.search(r"Unsupported global: GLOBAL (\S+)", str(e)):
            raise ConvertError(f"{path}: holds Python objects other than tensors ({found[1]}); pass "
                               "--trust-pickle if you trust this file") from None
        raise ConvertError(f"{path}: not a PyTorch checkpoint (unreadable pickle)") from None
    except Exception as e:  # torch raises several types (RuntimeError, EOFError, ...) for unreadable files
        raise ConvertError(f"{path}: not a PyTorch checkpoint ({type(e).__name__}: {_first_line(e)})") from None
    finally:
        mesh_log.setLevel(level)
    if isinstance(obj, dict) and {"state", "param_groups"} <= set(obj):
        raise ConvertError(f"{path}: holds an optimizer state, not model weights")
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items()):
        raise ConvertError(f"{path}: holds {_describe(obj, torch.Tensor)}, not a state dict of parameter tensors")
    return obj


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def _describe(obj, tensor_type: type) -> str:
    if isinstance(obj, dict):
        bad = next((k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, tensor_type)), None)
        return "an empty dict" if not obj else f"a dict whose entry {bad!r} is a {type(obj[bad]).__name__}"
    return f"a {type(obj).__name__}"


# ------------------------------------------------------------------------------------------- merging


def merge_shards(shards: list[dict], paths: list[Path], expected: dict[str, tuple[int, ...]]) -> dict:
    """The full state dict from every rank's shard. `expected` (name -> shape, from the model config) names
    what must come out; keys and shapes are checked against it."""
    keys = set(shards[0])
    for path, shard in zip(paths[1:], shards[1:]):
        if set(shard) != keys:
            diff = sorted(keys ^ set(shard))
            raise ConvertError(f"{path}: its parameter names differ from rank 0's ({_few(diff)}); not one save")
    return {key: _merge_one(key, [s[key] for s in shards], paths, expected[key]) for key in shards[0]}


def _merge_one(key: str, parts: list, paths: list[Path], shape: tuple[int, ...]):
    import torch
    from torch.distributed.tensor import DTensor

    dtensor = [isinstance(p, DTensor) for p in parts]
    if not any(dtensor):
        # Plain per-rank tensors (verl's merger accepts them too): dim-0 chunks, or full replicas.
        full = parts[0] if tuple(parts[0].shape) == shape else torch.cat(parts, 0)
        return _checked(full, key, paths[0], shape)
    if not all(dtensor):
        raise ConvertError(f"{paths[dtensor.index(False)]}: {key} is a plain tensor where rank 0 saved a DTensor")
    first, world = parts[0], len(parts)
    mesh = first.device_mesh.mesh
    if mesh.numel() != world:
        raise ConvertError(f"{paths[0]}: {key} is sharded over a device mesh of {mesh.numel()} ranks but the "
                           f"file names say world size {world}")
    placements = tuple(first.placements)
    sharded = [i for i, p in enumerate(placements) if p.is_shard()]
    if len(sharded) > 1 or any(not (p.is_shard() or p.is_replicate()) for p in placements):
        raise ConvertError(f"{paths[0]}: {key} has placements {placements}; only FSDP's (one sharded mesh "
                           "dimension, the others replicated) can be merged")
    for path, part in zip(paths[1:], parts[1:]):
        if tuple(part.placements) != placements:
            raise ConvertError(f"{path}: {key} has placements {tuple(part.placements)}, rank 0 {placements}")
    if not sharded:
        return _checked(first.to_local(), key, paths[0], shape)
    # The ranks at index 0 of every replicated mesh dimension hold one whole copy, in order along the sharded one.
    along = sharded[0]
    index = tuple(slice(None) if d == along else 0 for d in range(mesh.ndim))
    pieces = [parts[r].to_local() for r in mesh[index].tolist()]
    return _checked(torch.cat(pieces, placements[along].dim), key, paths[0], shape)


def _checked(tensor, key: str, path: Path, shape: tuple[int, ...]):
    if tuple(tensor.shape) != shape:
        raise ConvertError(f"{path}: {key} merges to shape {tuple(tensor.shape)} but the model in "
                           f"huggingface/config.json has {shape}")
    return tensor.contiguous()


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


# ------------------------------------------------------------------------------------------ the model


def _meta_model(hf_dir: Path):
    """The architecture in huggingface/config.json, built on the meta device (no memory, no init)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if not (hf_dir / "config.json").is_file():
        raise ConvertError(f"{hf_dir / 'config.json'}: not found; verl saves the model config there and the "
                           "converter needs it to know the architecture")
    read_json_object(hf_dir / "config.json", ConvertError)  # its own message for bad JSON, before transformers'
    try:
        config = AutoConfig.from_pretrained(hf_dir)
    except Exception as e:  # transformers raises ValueError/OSError/KeyError for unknown or broken configs
        raise ConvertError(f"{hf_dir / 'config.json'}: not a loadable model config ({_first_line(e)})") from None
    if not getattr(config, "architectures", None) and config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        # A config with a model_type alone: the causal LM transformers' Auto classes build for that type.
        config.architectures = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config.model_type]]
    arch = (getattr(config, "architectures", None) or [""])[0]
    if not arch.endswith("ForCausalLM"):
        raise ConvertError(f"{hf_dir / 'config.json'}: architecture {arch or 'unknown'!r} is not a causal LM; "
                           "appo converts causal-LM actors only")
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _write(out: Path, fill) -> None:
    """`fill(stage)` writes the output into a folder beside `out`, which then replaces `out`; a failure (disk
    full, no permission) is a ConvertError and leaves `out` as it was."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.convert-"))
    except OSError as e:
        raise ConvertError(f"{out}: cannot write there ({e.strerror or e})") from None
    old = stage.with_name(stage.name + ".old")
    try:
        fill(stage)
        if out.exists():
            os.replace(out, old)
        os.replace(stage, out)
    except OSError as e:
        if old.exists() and not out.exists():
            os.replace(old, out)
        kept = "it is left as it was" if out.exists() else "nothing was written"
        raise ConvertError(f"{out}: cannot write the converted model ({e.strerror or e}); {kept}") from None
    finally:
        for leftover in (stage, old):
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)


def _tied_groups(model) -> list[list[str]]:
    """Names that share one parameter (e.g. lm_head.weight and model.embed_tokens.weight when tied)."""
    by_id: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(param), []).append(name)
    return [names for names in by_id.values() if len(names) > 1]


def _check_keys(saved: set[str], model, path: Path) -> set[str]:
    """The tied aliases to drop; raises naming missing or foreign parameters."""
    expected = set(model.state_dict())
    foreign = sorted(saved - expected)
    if foreign:
        hint = " (LoRA adapters: merge them into the base weights before converting)" \
            if any("lora_" in k for k in foreign) else ""
        raise ConvertError(f"{path}: holds parameters the model in huggingface/config.json does not have: "
                           f"{_few(foreign)}{hint}")
    aliases, missing = set(), expected - saved
    for names in _tied_groups(model):
        present = [n for n in names if n in saved]
        if present:
            missing -= set(names)
            aliases |= set(present[1:])
    if missing:
        raise ConvertError(f"{path}: lacks parameters the model needs: {_few(sorted(missing))}")
    return aliases


# ------------------------------------------------------------------------------------------ converting


def convert_verl_fsdp(checkpoint: str | Path, out_dir: str | Path, dtype: str | None = None, overwrite: bool = False,
                      trust_pickle: bool = False) -> ConvertResult:
    """Merge a verl FSDP actor checkpoint into `out_dir` (safetensors, config, tokenizer). `dtype` casts the
    floating-point weights (default: as saved). Nothing is written unless the whole conversion succeeds."""
    import torch

    out = Path(out_dir).expanduser()
    if dtype is not None and dtype not in DTYPES:
        raise ConvertError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if out.is_symlink():  # replacing it would act on the link, not on what the user meant
        raise ConvertError(f"{out}: is a symbolic link; give the directory itself (or a new path) as --out")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConvertError(f"{out}: exists and is not empty; pass --force to replace it")
    actor = find_actor_dir(checkpoint)
    world, paths = shard_layout(actor)
    hf_dir = actor / "huggingface"
    model = _meta_model(hf_dir)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}

    shards = [load_shard(p, trust_pickle) for p in paths]
    aliases = _check_keys(set(shards[0]), model, paths[0])
    state = merge_shards(shards, paths, expected)
    del shards
    for names in _tied_groups(model):
        kept = [state[n] for n in names if n in state]
        if any(not torch.equal(kept[0], t) for t in kept[1:]):
            raise ConvertError(f"{paths[0]}: {' and '.join(names)} are tied in huggingface/config.json but "
                               "their saved values differ")
    state = {k: v for k, v in state.items() if k not in aliases}
    if dtype is not None:
        target = getattr(torch, dtype)
        state = {k: v.to(target) if v.is_floating_point() else v for k, v in state.items()}
    floats = [v.dtype for v in state.values() if v.is_floating_point()]
    out_dtype = max(set(floats), key=floats.count) if floats else torch.float32
    model = model.to(out_dtype)  # save_pretrained records the module's dtype in config.json (meta: no memory)
    tensors = len(state)  # save_pretrained empties the dict it is given

    warnings, copied = [], []
    for src in sorted(hf_dir.iterdir()):
        if src.is_symlink():  # its target may be any file of the machine: never copied into the output
            warnings.append(f"{src}: a symbolic link (to {os.readlink(src)}), not copied; copy the file itself "
                            "into huggingface/ if the output should have it")
            log.warning(warnings[-1])
        elif src.is_file() and not NOT_COPIED.fullmatch(src.name):
            copied.append(src)  # tokenizer, chat template, generation config as verl saved them
    tokenizer = any(src.name in TOKENIZER_FILES for src in copied)
    if not tokenizer:
        warnings.append(f"{hf_dir}: no tokenizer files ({', '.join(TOKENIZER_FILES)}); {out} has the weights "
                        "and config only: copy the base model's tokenizer files in before loading it with a tokenizer")
        log.warning(warnings[-1])
    _write(out, lambda stage: [model.save_pretrained(stage, state_dict=state, safe_serialization=True)]
           + [shutil.copy2(src, stage / src.name) for src in copied])
    return ConvertResult(out, actor, world, tensors, str(out_dtype).removeprefix("torch."), tokenizer, warnings)
