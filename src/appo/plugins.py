"""Loading a user's object named as `package.module:attribute` (reward functions, tools, environments).

The module is looked up on `sys.path` and in the current working directory, as most Python command-line
tools do: `appo train` run next to `my_rewards.py` finds `my_rewards:score` without a PYTHONPATH. Every
failure is one `PluginError` line naming the config key, the spec and what to fix.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from appo.errors import UserError


class PluginError(UserError):
    """A `module:attribute` spec that cannot be loaded; the message names the config key."""


def is_spec(text: str) -> bool:
    """True when `text` looks like `module:attribute` (as opposed to a registered name)."""
    module, sep, attr = text.partition(":")
    return bool(sep and module and attr)


def load_object(spec: str, key: str) -> Any:
    """The attribute `spec` names; `key` is the config key the spec came from (for the message)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise PluginError(f"{key}='{spec}': expected 'package.module:name'")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.append(cwd)  # after the installed packages: a local file cannot shadow them
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # a module that raises while importing is as unusable as a missing one
        raise PluginError(f"{key}='{spec}': cannot import module '{module_name}' "
                          f"({type(e).__name__}: {e})") from None
    except SystemExit as e:
        raise PluginError(f"{key}='{spec}': importing module '{module_name}' called exit({e.code})") from None
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
            raise PluginError(f"{key}='{spec}': module '{module_name}' has no '{attr}'; "
                              f"it defines: {', '.join(public) or '(nothing callable)'}")
        obj = getattr(obj, part)
    return obj
