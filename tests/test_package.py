"""The package's shape: every module imports, no import cycles, no hidden imports in functions, short
functions (the driver must stay easy to change)."""
import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import alexnet_cuda

ROOT = Path(alexnet_cuda.__file__).resolve().parent
MAX_FUNCTION_LINES = 80
OPTIONAL = {"alexnet_cuda._emu", "alexnet_cuda._cuda"}  # compiled extensions, imported where needed


def modules():
    """{module name: path} of every .py module of the package."""
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _target(mod, is_pkg, node, alias, known):
    """The package module a relative import refers to."""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
    name = ".".join(base + ([node.module] if node.module else []))
    sub = f"{name}.{alias.name}"
    return sub if sub in known or sub in OPTIONAL else name


def relative_imports(mod, path, known):
    """[(imported module, in a function?)] for every relative import in `path`."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    out = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom) and child.level > 0:
                out.extend((_target(mod, is_pkg, child, a, known), in_function) for a in child.names)
            visit(child, inner)

    visit(tree, False)
    return out


def test_every_module_imports():
    for info in pkgutil.walk_packages(alexnet_cuda.__path__, "alexnet_cuda."):
        if info.name != "alexnet_cuda.__main__":  # (running it is `python -m alexnet_cuda`)
            importlib.import_module(info.name)


def find_cycle(graph):
    """A list of modules forming a cycle, or None."""
    state = {}

    def dfs(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = dfs(nxt, stack + [nxt])
                if found:
                    return found
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = dfs(node, [node])
            if found:
                return found
    return None


def import_graph():
    mods = modules()
    graph = {m: set() for m in mods}
    for m, path in mods.items():
        for target, _ in relative_imports(m, path, mods):
            if target != m and target in mods:
                graph[m].add(target)
    return graph


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None, f"import cycle: {' -> '.join(find_cycle(import_graph()))}"


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_relative_imports_inside_functions_but_the_extensions():
    mods = modules()
    hidden = [(m, t) for m, path in mods.items() for t, in_fn in relative_imports(m, path, mods)
              if in_fn and t not in OPTIONAL]
    assert hidden == []


@pytest.mark.parametrize("name", sorted(modules()))
def test_functions_are_short(name):
    tree = ast.parse(modules()[name].read_text())
    long = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == [], f"functions over {MAX_FUNCTION_LINES} lines in {name}: {long}"
