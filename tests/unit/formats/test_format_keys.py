"""`tools.format` and `tools.chat_template`: checked at start-up, one line, exit 2."""

from __future__ import annotations

import pytest

from appo.config import ConfigError, load_config
from tests.unit.appo_cli import assert_user_error, run_appo


def test_tags_is_the_default_of_every_preset():
    from appo.config import preset_names

    for name in preset_names():
        cfg = load_config(name)
        if name == "quickstart-chat":  # the one preset that is the quickstart in the chat-template format
            assert (cfg.tools.format, cfg.tools.chat_template) == ("chat_template", "chatml")
            continue
        assert (cfg.tools.format, cfg.tools.chat_template) == ("tags", None), name


@pytest.mark.parametrize("overrides, needle", [
    (["tools.format=native"], "choose one of: tags, chat_template"),
    (["tools.format=chat_template", "tools.chat_template=qwen9"], "choose one of: chatml, qwen3, llama3"),
    (["tools.chat_template=chatml"], "set tools.format=chat_template"),
])
def test_bad_values_are_refused(overrides, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        load_config("tiny", overrides)


def test_a_template_file_is_accepted(tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text("{{ messages }}")
    cfg = load_config("tiny", ["tools.format=chat_template", f"tools.chat_template={path}"])
    assert cfg.tools.chat_template == str(path)


def test_the_cli_says_it_in_one_line():
    assert_user_error(run_appo("config", "show", "tiny", "tools.format=native"), "config", "tags, chat_template")


def test_a_template_that_is_not_prefix_preserving_stops_appo_train_at_start_up(tmp_path):
    """The probe runs before the model loads: one line naming the template and the shipped fix, exit 2."""
    from tests.unit.formats.test_chat_template import DROPS_THINK

    template = tmp_path / "drops_think.jinja"
    template.write_text(DROPS_THINK)
    proc = run_appo("train", "--config", "tiny", "tools.format=chat_template", f"tools.chat_template={template}",
                    f"trainer.output_dir={tmp_path / 'run'}", "--no-progress")
    assert_user_error(proc, "train", str(template), "not prefix-preserving", "tools.chat_template=qwen3")
    assert not (tmp_path / "run" / "sft").exists()
