"""The `appo` commands. Each module parses one command's arguments and runs its recipe over the library
(`train`, `sft`, `eval`, `rollout`, `tool`, `index`, `config`, `prepare`); nothing below imports them."""
