"""Reading a verl launch script (the seed's `bash` launchers) without running it: the overrides its
`python -m verl.trainer.main_ppo` line passes, with the script's shell variables expanded.

Understood: assignments (`VAR=...`, `export VAR=...`), `${VAR}`, `$VAR`, `${VAR:-default}`, `${VAR##*/}`,
`$((arithmetic))`, `$(dirname ...)` and the `$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)` idiom,
`source` of a file next to the script, shell functions called by name, line continuations. Nothing in
the script is executed.
"""

from __future__ import annotations

import ast
import operator
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

TRAINER_MODULES = ("verl.trainer.main_ppo",)
_SCRIPT_DIR = re.compile(r'\$\(\s*cd\s+"?\$\(\s*dirname\s+"?\$\{BASH_SOURCE\[0\]\}"?\s*\)"?[^)]*pwd\s*\)')
_DIRNAME = re.compile(r'\$\(\s*dirname\s+("[^"]*"|\S+)\s*\)')
_BRACED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)((?::-|##\*/|#|%)[^}]*)?\}")
_PLAIN = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*|0)")
_ASSIGN = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_FUNC = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*\(\)\s*\{\s*$")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
        ast.Div: operator.floordiv, ast.Mod: operator.mod}


class LaunchScriptError(ValueError):
    """The script has no verl trainer command we can read."""


@dataclass
class LaunchCommand:
    script: Path
    overrides: list[str] = field(default_factory=list)   # key=value, as verl received them
    config_name: str | None = None                        # --config-name (the verl base yaml)


def _arith(expr: str) -> str:
    def ev(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        raise ValueError(expr)

    try:
        return str(ev(ast.parse(expr.strip(), mode="eval").body))
    except (ValueError, SyntaxError):
        return f"$(({expr}))"


def _expand_arithmetic(text: str, variables: dict[str, str]) -> str:
    """Each `$((expr))` replaced by its integer value (bare names read from `variables`)."""
    out, i = [], 0
    while (start := text.find("$((", i)) >= 0:
        depth, j = 0, start + 1
        while j < len(text):
            depth += {"(": 1, ")": -1}.get(text[j], 0)
            if depth == 0:
                break
            j += 1
        expr = text[start + 3:j - 1]
        used = re.findall(r"\b([A-Za-z_][A-Za-z0-9_]*)\b", expr)
        names = re.sub(r"\b([A-Za-z_][A-Za-z0-9_]*)\b", lambda v: variables.get(v.group(1), ""), expr)
        # an unset variable leaves the value unset (as the override of an unset variable is empty)
        out += [text[i:start], _arith(names) if all(variables.get(n) for n in used) else ""]
        i = j + 1
    return "".join(out) + text[i:]


class _Shell:
    def __init__(self, script: Path):
        self.script = script
        self.vars: dict[str, str] = {}
        self.functions: dict[str, list[str]] = {}
        self.commands: list[LaunchCommand] = []

    def expand(self, text: str, here: Path) -> str:
        text = _SCRIPT_DIR.sub(lambda m: str(here.parent), text)
        for _ in range(3):  # nested $(dirname "$(dirname ...)")
            text = _DIRNAME.sub(lambda m: str(Path(self.expand(m.group(1).strip('"'), here)).parent), text)

        def braced(m):
            name, op = m.group(1), m.group(2) or ""
            value = self.vars.get(name, "")
            if op.startswith(":-"):
                return value or self.expand(op[2:], here)
            if op == "##*/":
                return value.rsplit("/", 1)[-1]
            return value

        text = _BRACED.sub(braced, text)
        text = _PLAIN.sub(lambda m: str(self.script) if m.group(1) == "0" else self.vars.get(m.group(1), ""), text)
        return _expand_arithmetic(text, self.vars)

    def run(self, lines: list[str], here: Path, depth: int = 0) -> None:
        if depth > 8:
            raise LaunchScriptError(f"{here}: sources or calls nest too deeply")
        i = 0
        while i < len(lines):
            line = lines[i].strip()
            i += 1
            if (m := _FUNC.match(line)) is not None:
                body = []
                while i < len(lines) and lines[i].strip() != "}":
                    body.append(lines[i])
                    i += 1
                i += 1
                self.functions[m.group(1)] = body
                continue
            if not line or line.startswith("#"):
                continue
            if line in self.functions:
                self.run(self.functions[line], here, depth + 1)
            elif line.startswith(("source ", ". ")):
                target = Path(_words(self.expand(line.split(None, 1)[1], here))[0])
                if target.is_file() and target.suffix == ".sh":
                    self.run(_logical_lines(target), target, depth + 1)
            elif (m := _ASSIGN.match(line)) is not None:
                words = _words(self.expand(m.group(2), here))
                self.vars[m.group(1)] = words[0] if words else ""
            elif any(mod in line for mod in TRAINER_MODULES):
                self.commands.append(self._command(_words(self.expand(line, here))))

    def _command(self, words: list[str]) -> LaunchCommand:
        cmd = LaunchCommand(self.script)
        start = next(i for i, w in enumerate(words) if w in TRAINER_MODULES) + 1
        for w in words[start:]:
            if w in ("|", "||", "&&", ";", "&") or w.startswith(("2>", ">", "1>")):
                break
            if w.startswith("--config-name="):
                cmd.config_name = w.split("=", 1)[1]
            elif w.startswith("--"):
                continue  # --config-path: verl's yaml folder
            elif "=" in w:
                cmd.overrides.append(w.lstrip("+"))
        return cmd


def _words(text: str) -> list[str]:
    try:
        return shlex.split(text, comments=True)
    except ValueError:
        return text.split()


def _logical_lines(path: Path) -> list[str]:
    """Lines with backslash continuations joined."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return re.sub(r"\\\r?\n", " ", text).splitlines()


def read_launch_script(path: str | Path) -> LaunchCommand:
    """The (last) verl trainer command of a launch script."""
    script = Path(path)
    try:
        lines = _logical_lines(script)
    except OSError as e:
        raise LaunchScriptError(f"{script}: cannot read ({e.strerror or e})") from None
    shell = _Shell(script.resolve())
    shell.run(lines, script.resolve())
    if not shell.commands:  # a library of functions (the seed's _appo_common.sh): read the trainer's one
        for body in shell.functions.values():
            if any(mod in line for line in body for mod in TRAINER_MODULES):
                shell.run(body, script.resolve(), 1)
    if not shell.commands:
        raise LaunchScriptError(f"{script}: no `python -m verl.trainer.main_ppo ...` command found")
    return shell.commands[-1]
