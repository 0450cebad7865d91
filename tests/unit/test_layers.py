"""The package's layers point down only: commands -> train/eval -> rollout/tools/rewards/data/models -> core
-> the foundation modules (config, prompts, seeding, tool_format, ...). Same-layer packages may import one
another, but never in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "appo"
FOUNDATION = 0
LAYERS = {"core": 1, "rollout": 2, "tools": 2, "rewards": 2, "data": 2, "models": 2,
          "train": 3, "algorithms": 3, "eval": 3, "serve": 3, "commands": 4, "cli": 4}


def package_of(module: str) -> str:
    """'appo.rollout.hf' -> 'rollout'; 'appo.config' -> 'config'; 'appo' -> 'appo'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer(package: str) -> int:
    return LAYERS.get(package, FOUNDATION)


def package_imports() -> dict[tuple[str, str], list[str]]:
    """{(importer package, imported package): [importing files]} for every `appo` import in src/appo,
    lazy (function-level) imports included."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name == "appo" or name.startswith("appo."):
                    src, dst = package_of(module), package_of(name)
                    if src != dst and dst != "appo":
                        edges.setdefault((src, dst), []).append(str(path.relative_to(SRC)))
    return edges


def test_no_import_points_up_a_layer():
    upward = {f"{a} ({layer(a)}) -> {b} ({layer(b)}): {sorted(set(files))}"
              for (a, b), files in package_imports().items() if layer(b) > layer(a)}
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(sorted(upward))


def test_no_cycle_between_packages():
    edges = package_imports()
    cycles = sorted(f"{a} <-> {b}" for (a, b) in edges if (b, a) in edges and a < b)
    assert not cycles, f"packages that import each other: {cycles}"


def test_core_is_pure_math():
    for path in (SRC / "core").glob("*.py"):
        tree = ast.parse(path.read_text())
        roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        roots |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert roots <= {"__future__", "math", "collections", "typing", "dataclasses", "torch", "appo"}, path
        foreign = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                   and n.module.startswith("appo.") and not n.module.startswith("appo.core")}
        assert not foreign, (path, foreign)


def test_library_modules_have_no_command_entry_points():
    # sandbox_driver.py is the program the sandbox's interpreter runs, not an `appo` command.
    exempt = {SRC / "cli.py", SRC / "tools" / "sandbox_driver.py"}
    for path in SRC.rglob("*.py"):
        if path.parent.name == "commands" or path in exempt:
            continue
        tree = ast.parse(path.read_text())
        # an entry point: a top-level `main`, or any function that parses an `argv`
        mains = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)
                 and (n.name == "main" or any(a.arg == "argv" for a in n.args.args))]
        assert not mains, f"{path.relative_to(SRC)} defines {mains}: commands live in appo.commands"
