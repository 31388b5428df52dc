"""The package's import rules (DESIGN "Layout"), read from the source with `ast`, every import
counted: module level, inside functions (lazy imports) and under `if TYPE_CHECKING:`.

- no import cycles in `rlhf_stack/` or `data_tools/`;
- `rlhf_stack` imports `data_tools` only in `cli.py` (to mount `label` and `data`);
- `data_tools` imports only the public surface of `rlhf_stack` listed in `DATA_TOOLS_MAY_USE`.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("rlhf_stack", "data_tools")
DATA_TOOLS_MAY_USE = {
    "rlhf_stack.data",  # the on-disk formats: row rules, loaders, the pair rule, prompt messages
    "rlhf_stack.errors",  # the error types a command turns into one message
    "rlhf_stack.config",  # ModelConfig, for loading a model
    "rlhf_stack.modeling",  # model and tokenizer loading
    "rlhf_stack.provision",  # the offline demo model
    "rlhf_stack.metrics.agreement",  # labelers' agreement on rankings (labeler stats, demo data)
}


def module_files() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules `name` imports anywhere in its source (packages whose __init__ runs included)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for target in targets:
            parts = target.split(".")
            # importing a.b.c runs a/__init__ and a/b/__init__ first
            found.update(".".join(parts[:n]) for n in range(1, len(parts) + 1) if ".".join(parts[:n]) in known)
    ancestors = {".".join(name.split(".")[:n]) for n in range(1, name.count(".") + 2)}
    return found - ancestors  # a package's own __init__ is already running when its modules import


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {name: imported_modules(name, path, known) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_walker_sees_lazy_imports_and_finds_a_planted_cycle():
    graph = import_graph()
    assert "data_tools.labeler.cli" in graph["rlhf_stack.cli"]  # a module-level import
    assert "rlhf_stack.evaluation.report" in graph["rlhf_stack.pipeline.runner"]  # one inside a function
    planted = {**graph, "rlhf_stack.errors": graph["rlhf_stack.errors"] | {"rlhf_stack.pipeline.runner"}}
    assert cycles(planted), "a cycle through a lazy import must be found"


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_rlhf_stack_imports_data_tools_only_in_the_cli():
    offenders = sorted(f"{module} -> {target}" for module, targets in import_graph().items()
                       if module.startswith("rlhf_stack") and module != "rlhf_stack.cli"
                       for target in targets if target.split(".")[0] == "data_tools")
    assert offenders == []


def test_data_tools_uses_only_the_public_surface_of_rlhf_stack():
    allowed = DATA_TOOLS_MAY_USE | {"rlhf_stack", "rlhf_stack.metrics"}  # parent packages run first
    offenders = sorted(f"{module} -> {target}" for module, targets in import_graph().items()
                       if module.startswith("data_tools")
                       for target in targets if target.split(".")[0] == "rlhf_stack" and target not in allowed)
    assert offenders == []
