"""The packages mirror the layers, and imports flow one way (docs/architecture.md).

A static walk over every module's imports (including function-level ones, excluding
`if TYPE_CHECKING:` blocks), plus one interpreter proving the core pulls in no experiment layer.
"""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "backprop_lab"

# Each layer may import itself and the layers listed here, nothing else of backprop_lab.
ALLOWED = {
    "core": set(),
    "figures": {"core"},
    "config": {"core"},
    "tracking": {"core", "figures", "config"},
    "analysis": {"core", "figures", "config", "tracking"},
    "sweep": {"core", "figures", "config", "tracking", "analysis"},
    "search": {"core", "figures", "config", "tracking", "analysis", "sweep"},
    "serve": {"config", "tracking"},
}
# Third-party packages a layer must never import (stdlib and its own deps are free).
FORBIDDEN = {
    "core": {"hydra", "omegaconf", "mlflow", "pandas", "matplotlib", "pydantic", "sqlalchemy"},
    "figures": {"hydra", "omegaconf", "mlflow", "pandas", "pydantic"},
    "config": {"mlflow", "pandas", "matplotlib"},
    "analysis": {"hydra", "omegaconf"},
}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
            if node.module == "backprop_lab":
                found += [f"backprop_lab.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            here = path.relative_to(PACKAGE).parts[:-1]
            base = here[: len(here) - (node.level - 1)]
            found.append(".".join(("backprop_lab", *base, *(node.module or "").split("."))).rstrip("."))
    return found


def _layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "backprop_lab" else None


def test_every_module_sits_in_a_layer_package():
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "errors.py", "env.py")]
    assert loose == [], f"modules outside a layer package: {loose}"
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()} <= set(ALLOWED)


def test_imports_flow_one_way_between_layers():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        if len(parts) < 2:
            continue  # backprop_lab/__init__.py, errors.py, env.py: stdlib only, imported by all
        layer = parts[0]
        for module in _imports(path):
            target = _layer_of(module)
            shared = ("errors", "env")  # top-level modules every layer may import
            if target and target != layer and target not in ALLOWED[layer] and target not in shared:
                bad.append(f"{path.relative_to(PACKAGE)} imports {module}")
            if module.split(".")[0] in FORBIDDEN.get(layer, ()):
                bad.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert bad == []


def test_no_import_circles_between_modules():
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("backprop_lab", *path.relative_to(PACKAGE).with_suffix("").parts))
        name = name.removesuffix(".__init__")
        graph[name] = {m for m in _imports(path) if m.startswith("backprop_lab.") and m != name}
    # Only edges between modules (an import of a package means its __init__).
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycle.extend(stack[stack.index(nxt):] + [node, nxt] if nxt in stack else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, stack + [node]):
                return True
        state[node] = 2
        return False

    for node in sorted(graph):
        if state.get(node) is None and visit(node, []):
            break
    assert cycle == [], " -> ".join(cycle)


def test_core_and_figures_import_no_experiment_layer_at_run_time():
    modules = sorted(".".join(("backprop_lab", *p.relative_to(PACKAGE).with_suffix("").parts))
                     for pkg in ("core", "figures") for p in (PACKAGE / pkg).glob("[a-z]*.py"))
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(sorted(p for p in ('hydra', 'omegaconf', 'mlflow', 'pandas', 'pydantic')"
            " if p in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"core/figures pulled in: {out.stdout.strip()}"
