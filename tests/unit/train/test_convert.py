"""`appo convert --from verl-fsdp`: verl's sharded actor checkpoints back to one Hugging Face directory.

The shards are written the way verl saves them: every rank's `model_world_size_W_rank_R.pt` holds
{parameter name: DTensor} built by FSDP's own recipe for SHARDED_STATE_DICT (a replicated DTensor
redistributed to Shard(0) on the last mesh dimension: torch.chunk pieces of dim 0, computed locally), with
the process group faked in this one process (torch's "fake" backend: rank and world size are set, nothing
is sent). Layouts covered:
- verl 0.3.x (the APPO/ARPO forks, FSDP1): ("fsdp",) mesh, no fsdp_config.json, huggingface/ with config
  and tokenizer, optimizer and extra_state shards beside the model shards;
- verl 0.4.1+ (FSDP1 or FSDP2, same DTensor layout): fsdp_config.json and generation_config.json added, and
  hybrid sharding on a ("ddp", "fsdp") mesh;
- plain per-rank tensor chunks (no DTensor), which verl's merger also accepts;
- and, under torchrun, a real FSDP2 save (verl 0.4+'s `strategy: fsdp2`: `fully_shard` per decoder layer and
  on the root, `model.state_dict()` saved per rank) on 2 gloo CPU ranks. FSDP1 itself refuses to run without
  an accelerator, so verl 0.3.x's FSDP1 path is covered by its DTensor recipe above.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from appo.models import load_model, load_tokenizer
from appo.train.convert import ConvertError, convert_verl_fsdp

SRC = Path(__file__).resolve().parents[3] / "src"
PROMPT = "<|im_start|>user\nWhat is 12 * 7?<|im_end|>\n<|im_start|>assistant\n"


def save_verl_actor(model, tokenizer, actor: Path, world: int, mesh_shape: tuple[int, ...] | None = None,
                    dtensor: bool = True, with_tied_alias: bool = True, verl_04: bool = False) -> Path:
    """Write `model` as verl's FSDPCheckpointManager would from `world` ranks into `actor/`."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import DTensor, Replicate, Shard
    from torch.testing._internal.distributed.fake_pg import FakeStore

    actor.mkdir(parents=True)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if not with_tied_alias:
        state.pop("lm_head.weight")
    shape = mesh_shape or (world,)
    for rank in range(world):
        if dtensor:
            dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
            try:
                mesh = DeviceMesh("cpu", torch.arange(world).reshape(shape),
                                  mesh_dim_names=("fsdp",) if len(shape) == 1 else ("ddp", "fsdp"))
                replicated = [Replicate()] * len(shape)
                sharded = replicated[:-1] + [Shard(0)]
                shard = {k: DTensor.from_local(v, mesh, replicated, run_check=False).redistribute(placements=sharded)
                         for k, v in state.items()}
                torch.save(shard, actor / f"model_world_size_{world}_rank_{rank}.pt")
            finally:
                dist.destroy_process_group()
        else:
            torch.save({k: _chunk(v, world, rank) for k, v in state.items()},
                       actor / f"model_world_size_{world}_rank_{rank}.pt")
        torch.save({"state": {}, "param_groups": [{"lr": 1e-6, "params": []}]},
                   actor / f"optim_world_size_{world}_rank_{rank}.pt")
        torch.save({"lr_scheduler": {"last_epoch": 3}, "rng": {"cpu": torch.get_rng_state()}},
                   actor / f"extra_state_world_size_{world}_rank_{rank}.pt")
    hf = actor / "huggingface"
    model.config.save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    if verl_04:
        model.generation_config.save_pretrained(hf)
        (actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 1, "world_size": world}, indent=4))
    return actor


def _chunk(t: torch.Tensor, world: int, rank: int) -> torch.Tensor:
    pieces = t.chunk(world)
    return pieces[rank].clone() if rank < len(pieces) else t.new_empty((0, *t.shape[1:]))


def _logits(model, tokenizer) -> torch.Tensor:
    ids = torch.tensor([tokenizer.encode(PROMPT)])
    with torch.no_grad():
        return model(ids).logits


def _max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture()
def original(tiny_model_dir):
    return load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))


LAYOUTS = {
    "verl0.3-fsdp-2ranks": dict(world=2),
    "verl0.3-fsdp-4ranks": dict(world=4),
    "verl0.3-fsdp-4ranks-untied-key-absent": dict(world=4, with_tied_alias=False),
    "verl0.4-hsdp-2x2": dict(world=4, mesh_shape=(2, 2), verl_04=True),
    "plain-chunks-4ranks": dict(world=4, dtensor=False),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_round_trip_keeps_every_tensor_and_the_logits(original, tmp_path, layout):
    model, tokenizer = original
    actor = save_verl_actor(model, tokenizer, tmp_path / "global_step_3" / "actor", **LAYOUTS[layout])
    if LAYOUTS[layout]["world"] == 4:  # the vocab splits unevenly over 4 ranks: the last chunk is shorter
        assert model.config.vocab_size % 4 != 0 or model.config.hidden_size % 4 != 0

    result = convert_verl_fsdp(actor, tmp_path / "hf")

    assert (result.world_size, result.dtype, result.tokenizer_copied) == (LAYOUTS[layout]["world"], "float32", True)
    assert result.tensors == len(model.state_dict()) - 1  # the tied lm_head.weight is the embedding
    converted = load_model(str(tmp_path / "hf"))
    assert converted.lm_head.weight is converted.model.embed_tokens.weight  # still tied after loading
    assert _max_diff(converted.state_dict(), model.state_dict()) == 0.0
    assert (_logits(converted, tokenizer) - _logits(model, tokenizer)).abs().max().item() == 0.0
    converted_tok = load_tokenizer(str(tmp_path / "hf"))
    assert converted_tok.encode(PROMPT) == tokenizer.encode(PROMPT)
    assert converted_tok.chat_template == tokenizer.chat_template
    assert not any(p.name.startswith(".hf.convert-") for p in tmp_path.iterdir())  # staging folder gone


def test_finds_the_latest_step_from_the_run_folder_and_casts_on_request(original, tmp_path):
    model, tokenizer = original
    save_verl_actor(model, tokenizer, tmp_path / "run" / "global_step_2" / "actor", world=2)
    (tmp_path / "run" / "latest_checkpointed_iteration.txt").write_text("2")

    result = convert_verl_fsdp(tmp_path / "run", tmp_path / "hf", dtype="bfloat16")

    assert result.actor_dir == tmp_path / "run" / "global_step_2" / "actor"
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    converted = load_model(str(tmp_path / "hf"), dtype="bfloat16")
    want = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    assert _max_diff(converted.state_dict(), want) == 0.0


def test_missing_tokenizer_is_a_warning_and_the_weights_still_convert(original, tmp_path, caplog):
    model, tokenizer = original
    actor = save_verl_actor(model, tokenizer, tmp_path / "actor", world=2)
    for p in (actor / "huggingface").iterdir():
        if p.name != "config.json":
            p.unlink()

    result = convert_verl_fsdp(actor, tmp_path / "hf")

    assert not result.tokenizer_copied
    assert any("no tokenizer files" in r.message for r in caplog.records)
    assert _max_diff(load_model(str(tmp_path / "hf")).state_dict(), model.state_dict()) == 0.0


def test_shards_of_another_architecture_are_named(original, tmp_path):
    model, tokenizer = original
    actor = save_verl_actor(model, tokenizer, tmp_path / "actor", world=2)
    config = json.loads((actor / "huggingface" / "config.json").read_text())
    config["num_hidden_layers"] -= 1
    config["layer_types"] = config["layer_types"][:-1]
    (actor / "huggingface" / "config.json").write_text(json.dumps(config))

    with pytest.raises(ConvertError, match=r"rank_0\.pt: holds parameters the model in huggingface/config\.json "
                                           r"does not have: model\.layers\.\d+\."):
        convert_verl_fsdp(actor, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_an_existing_output_is_kept_unless_forced(original, tmp_path):
    model, tokenizer = original
    actor = save_verl_actor(model, tokenizer, tmp_path / "actor", world=2)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "notes.txt").write_text("mine")
    with pytest.raises(ConvertError, match="exists and is not empty; pass --force"):
        convert_verl_fsdp(actor, tmp_path / "hf")
    convert_verl_fsdp(actor, tmp_path / "hf", overwrite=True)
    assert not (tmp_path / "hf" / "notes.txt").exists() and (tmp_path / "hf" / "config.json").is_file()


FSDP2_SAVE = """
import os, sys
import torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("fsdp",))
for layer in model.model.layers:
    fully_shard(layer, mesh=mesh)
fully_shard(model, mesh=mesh)
torch.save(model.state_dict(), os.path.join(sys.argv[2], f"model_world_size_{world}_rank_{rank}.pt"))
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.dist
def test_real_fsdp2_shards_from_torchrun(tiny_model_dir, original, tmp_path):
    model, tokenizer = original
    actor = tmp_path / "global_step_1" / "actor"
    actor.mkdir(parents=True)
    (tmp_path / "save.py").write_text(FSDP2_SAVE)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(tmp_path / "save.py"), str(tiny_model_dir), str(actor)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    model.config.save_pretrained(actor / "huggingface")
    tokenizer.save_pretrained(actor / "huggingface")

    convert_verl_fsdp(actor, tmp_path / "hf")

    converted = load_model(str(tmp_path / "hf"))
    assert _max_diff(converted.state_dict(), model.state_dict()) == 0.0
    assert (_logits(converted, tokenizer) - _logits(model, tokenizer)).abs().max().item() == 0.0


# ------------------------------------------------------------------------------ through the real entry point


def _appo_convert(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-m", "appo.cli", "convert", "--from", "verl-fsdp", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture()
def four_rank_actor(original, tmp_path) -> Path:
    model, tokenizer = original
    return save_verl_actor(model, tokenizer, tmp_path / "global_step_1" / "actor", world=4, verl_04=True)


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("appo convert: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_cli_converts(four_rank_actor, tmp_path, original):
    proc = _appo_convert(four_rank_actor.parent, "--out", tmp_path / "hf")
    assert proc.returncode == 0, proc.stderr
    assert "4 rank shards" in proc.stdout
    assert _max_diff(load_model(str(tmp_path / "hf")).state_dict(), original[0].state_dict()) == 0.0


def test_cli_missing_rank(four_rank_actor, tmp_path):
    (four_rank_actor / "model_world_size_4_rank_2.pt").unlink()
    _one_line_error(_appo_convert(four_rank_actor, "--out", tmp_path / "hf"),
                    str(four_rank_actor), "missing model_world_size_4_rank_2.pt")


def test_cli_mixed_world_sizes(four_rank_actor, tmp_path):
    shutil.copy(four_rank_actor / "model_world_size_4_rank_0.pt", four_rank_actor / "model_world_size_2_rank_0.pt")
    _one_line_error(_appo_convert(four_rank_actor, "--out", tmp_path / "hf"),
                    "different world sizes", "world size 2: 1 file(s)", "world size 4: 4 file(s)")


def test_cli_world_size_disagrees_with_fsdp_config(four_rank_actor, tmp_path):
    (four_rank_actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 1, "world_size": 8}))
    _one_line_error(_appo_convert(four_rank_actor, "--out", tmp_path / "hf"),
                    "fsdp_config.json: world_size is 8", "model_world_size_4_rank_*.pt")


def test_cli_renamed_shards_disagree_with_their_mesh(original, tmp_path):
    model, tokenizer = original
    actor = save_verl_actor(model, tokenizer, tmp_path / "actor", world=4)
    for rank in (2, 3):
        (actor / f"model_world_size_4_rank_{rank}.pt").unlink()
    for rank in (0, 1):
        (actor / f"model_world_size_4_rank_{rank}.pt").rename(actor / f"model_world_size_2_rank_{rank}.pt")
    _one_line_error(_appo_convert(actor, "--out", tmp_path / "hf"),
                    "model_world_size_2_rank_0.pt", "device mesh of 4 ranks", "world size 2")


@pytest.mark.parametrize("foreign", ["text", "optimizer", "pickle"])
def test_cli_foreign_file(four_rank_actor, tmp_path, foreign):
    shard = four_rank_actor / "model_world_size_4_rank_1.pt"
    if foreign == "text":
        shard.write_text("not a checkpoint\n")
        want = "not a PyTorch checkpoint"
    elif foreign == "optimizer":
        shutil.copy(four_rank_actor / "optim_world_size_4_rank_1.pt", shard)
        want = "holds an optimizer state, not model weights"
    else:
        torch.save({"weights": Path("x")}, shard)  # an arbitrary object: refused without --trust-pickle
        want = "holds Python objects other than tensors (pathlib.PosixPath); pass --trust-pickle"
    _one_line_error(_appo_convert(four_rank_actor, "--out", tmp_path / "hf"), str(shard), want)
    assert not (tmp_path / "hf").exists()


def test_cli_not_a_checkpoint(tiny_model_dir, tmp_path):
    _one_line_error(_appo_convert(tiny_model_dir, "--out", tmp_path / "hf"),
                    str(tiny_model_dir), "no verl FSDP model shards")


# ------------------------------------------------------------------ hostile or unusual folders and outputs
# A symbolic link in huggingface/ is not followed into the output; bad JSON and unwritable or linked outputs
# are one line (exit 2) with nothing lost; a config.json naming only its model_type converts.

DEEP = "[" * 100_000 + "]" * 100_000


def test_a_symlink_in_huggingface_is_not_copied_into_the_output(four_rank_actor, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("API_KEY=hunter2\n")
    (four_rank_actor / "huggingface" / "notes.txt").symlink_to(secret)
    (four_rank_actor / "huggingface" / "special_tokens_map.json").unlink(missing_ok=True)
    (four_rank_actor / "huggingface" / "special_tokens_map.json").symlink_to(secret)
    out = tmp_path / "hf"
    proc = _appo_convert(four_rank_actor, "--out", out)
    assert proc.returncode == 0, proc.stderr
    leaked = [p.name for p in out.iterdir() if "hunter2" in p.read_text(errors="replace")]
    assert not leaked and not any(p.is_symlink() for p in out.iterdir())
    assert "notes.txt" in proc.stderr and "symbolic link" in proc.stderr


@pytest.mark.parametrize("name", ["fsdp_config.json", "huggingface/config.json"])
@pytest.mark.parametrize("content, problem", [(DEEP.encode(), "nested too deeply"),
                                              (b'{"world_size": "\xff"}', "UTF-8")])
def test_hostile_json_in_the_checkpoint_is_one_line(four_rank_actor, tmp_path, name, content, problem):
    (four_rank_actor / name).write_bytes(content)
    out = tmp_path / "hf"
    _one_line_error(_appo_convert(four_rank_actor, "--out", out), str(four_rank_actor / name), problem)
    assert not out.exists()


def test_a_symlinked_out_is_one_line_and_its_target_kept(four_rank_actor, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    link = tmp_path / "hf"
    link.symlink_to(target)
    _one_line_error(_appo_convert(four_rank_actor, "--out", link, "--force"), str(link), "symbolic link")
    assert (target / "keep.txt").read_text() == "mine" and link.is_symlink()


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_an_unwritable_out_is_one_line(four_rank_actor, tmp_path, where):
    if where == "under_a_file":
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "hf"
    else:
        out = "/proc/appo-convert-test/hf"
    _one_line_error(_appo_convert(four_rank_actor, "--out", out), str(out), "cannot write")
    assert (tmp_path / "afile").read_text() == "x" if where == "under_a_file" else True


def test_a_failed_write_keeps_the_previous_output(four_rank_actor, tmp_path, monkeypatch):
    from appo.train import convert
    from appo.train.convert import ConvertError

    out = tmp_path / "hf"
    out.mkdir()
    (out / "old.txt").write_text("previous conversion")

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(convert.shutil, "copy2", full)
    with pytest.raises(ConvertError, match="No space left on device"):
        convert.convert_verl_fsdp(four_rank_actor, out, overwrite=True)
    assert (out / "old.txt").read_text() == "previous conversion"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".hf")] == []


def test_a_config_with_model_type_but_no_architectures_converts(four_rank_actor, tmp_path, original):
    config = four_rank_actor / "huggingface" / "config.json"
    data = json.loads(config.read_text())
    del data["architectures"]
    config.write_text(json.dumps(data))
    proc = _appo_convert(four_rank_actor, "--out", tmp_path / "hf")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["Qwen2ForCausalLM"]
    assert _max_diff(load_model(str(tmp_path / "hf")).state_dict(), original[0].state_dict()) == 0.0
    assert os.path.isfile(tmp_path / "hf" / "tokenizer.json")
