"""`appo convert` against a hostile or unusual checkpoint folder and output path: a symbolic link in
huggingface/ is not followed into the output, bad JSON and unwritable or linked outputs are one line (exit 2)
with nothing lost, and a config.json naming only its model_type converts (as transformers' own loaders do)."""

from __future__ import annotations

import json
import os

import pytest

from appo.models import load_model
from tests.unit.train.test_convert import _appo_convert, _max_diff, _one_line_error, four_rank_actor, original  # noqa: F401

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
