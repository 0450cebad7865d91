"""A saved checkpoint carries its training prompt format: `appo_prompt.json` and the chat template's
default system turn, so plain transformers prompts it as it was trained."""

from __future__ import annotations

import json

import pytest

from appo.data.templates import PROMPT_FILE, QUICKSTART_SYSTEM_PROMPT, read_prompt_format
from appo.train.checkpoint import save_hf


def _trained_on(system):
    return [[{"role": "system", "content": system}, {"role": "user", "content": f"Calculate {i} + 1."}]
            for i in range(3)]


def test_saved_chat_template_defaults_to_the_training_system_prompt(tiny_model, tiny_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    before = tiny_tokenizer.chat_template
    save_hf(tiny_model, tiny_tokenizer, tmp_path / "hf", trained_on=_trained_on(QUICKSTART_SYSTEM_PROMPT))
    assert tiny_tokenizer.chat_template == before          # the live tokenizer is not changed
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    user = [{"role": "user", "content": "Calculate 2 + 2."}]
    text = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    expected = tiny_tokenizer.apply_chat_template([{"role": "system", "content": QUICKSTART_SYSTEM_PROMPT}] + user,
                                                  add_generation_prompt=True, tokenize=False)
    assert text == expected
    own = [{"role": "system", "content": "Be brief."}] + user       # an explicit system turn still wins
    assert tok.apply_chat_template(own, tokenize=False) == tiny_tokenizer.apply_chat_template(own, tokenize=False)
    data = json.loads((tmp_path / "hf" / PROMPT_FILE).read_text())
    assert data["system_prompt"] == QUICKSTART_SYSTEM_PROMPT
    assert read_prompt_format(tmp_path / "hf")["system_prompt"] == QUICKSTART_SYSTEM_PROMPT

    # saving again from the reloaded tokenizer (training on from a checkpoint) replaces the default
    save_hf(tiny_model, tok, tmp_path / "again", trained_on=_trained_on("Second prompt."))
    again = AutoTokenizer.from_pretrained(tmp_path / "again")
    text = again.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    assert "Second prompt." in text and QUICKSTART_SYSTEM_PROMPT not in text


def test_without_training_messages_no_prompt_file_is_written(tiny_model, tiny_tokenizer, tmp_path):
    save_hf(tiny_model, tiny_tokenizer, tmp_path / "hf")
    assert read_prompt_format(tmp_path / "hf") is None


def test_a_broken_prompt_file_is_named(tmp_path):
    (tmp_path / PROMPT_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=PROMPT_FILE):
        read_prompt_format(tmp_path)


def test_a_chat_template_checkpoint_is_evaluated_in_its_own_format(tiny_model, chat_tokenizer, tmp_path):
    from appo.config import load_config
    from appo.data.templates import CHAT_QUICKSTART_SYSTEM_PROMPT
    from appo.eval.evaluate import adopt_prompt_format
    from appo.formats import build_format
    from appo.models import load_tokenizer
    from appo.tools.registry import BUILTIN_TOOLS

    save_hf(tiny_model, chat_tokenizer("chatml"), tmp_path / "hf", trained_on=_trained_on(CHAT_QUICKSTART_SYSTEM_PROMPT),
            tool_names=("python", "search"), tool_format="chat_template")
    saved = read_prompt_format(tmp_path / "hf")
    assert saved["tool_format"] == "chat_template" and "python" not in saved["tags"] and "result" not in saved["tags"]
    # the saved template (with the training system prompt as its default) still passes the start-up probe
    fmt = build_format("chat_template", load_tokenizer(str(tmp_path / "hf")), [BUILTIN_TOOLS["python"].spec])
    assert CHAT_QUICKSTART_SYSTEM_PROMPT in fmt.prompt_text([{"role": "user", "content": "hi"}])
    cfg = load_config(None, [])
    line = adopt_prompt_format(cfg, tmp_path / "hf")
    assert cfg.tools.format == "chat_template" and "tools.format=chat_template" in line
    assert cfg.data.system_prompt == CHAT_QUICKSTART_SYSTEM_PROMPT
    cfg = load_config(None, ["data.system_prompt=none"])
    assert "tools.format=chat_template" in adopt_prompt_format(cfg, tmp_path / "hf")
    assert cfg.tools.format == "chat_template" and cfg.data.system_prompt == "none"
    save_hf(tiny_model, chat_tokenizer("chatml"), tmp_path / "tags", trained_on=_trained_on("x"))
    cfg = load_config(None, [])
    adopt_prompt_format(cfg, tmp_path / "tags")
    assert cfg.tools.format == "tags" and read_prompt_format(tmp_path / "tags")["tool_format"] == "tags"
