"""The package's imports run one way: no module imports, even inside a function, a module that imports it back; the
training loop stands on nothing of the study or Slurm; no module outgrows a reader (400 lines)."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1]/'sr3d'

def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)

def imports(path: Path) -> set[str]:
    "Every sr3d module `path` imports, at any depth of its code (functions included)."
    here = module_name(path).split('.')
    package = here if path.name == '__init__.py' else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import): names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            mod = '.'.join(base + ([node.module] if node.module else []))
            names = [mod] + [f'{mod}.{a.name}' for a in node.names]  # `from sr3d import study` names a module
        else: continue
        found |= {n for n in names if n.split('.')[0] == 'sr3d'}
    return found

def graph() -> dict[str, set[str]]:
    mods = {module_name(p): p for p in PKG.rglob('*.py') if p.name != '_modidx.py'}
    return {m: {i for i in imports(p) if i in mods and i != m and i != 'sr3d'} for m, p in mods.items()}

def cycle(g: dict) -> list[str] | None:
    "One import cycle of `g` as a path, or None."
    state, stack = {}, []
    def visit(m):
        state[m] = 'open'
        stack.append(m)
        for n in sorted(g[m]):
            if state.get(n) == 'open': return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)): return found
        state[m] = 'done'
        stack.pop()
    for m in sorted(g):
        if m not in state and (found := visit(m)): return found

def test_the_cycle_finder_finds_one():
    assert cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert cycle({'a': {'b'}, 'b': set()}) is None

def test_function_level_imports_count():
    src = PKG/'cli.py'
    assert {'sr3d.study', 'sr3d.slurm'} <= imports(src)

def test_no_import_cycle():
    assert (found := cycle(graph())) is None, 'import cycle: ' + ' -> '.join(found)

def reaches(g: dict, m: str) -> set[str]:
    seen, todo = set(), [m]
    while todo:
        for n in g[todo.pop()] - seen: seen.add(n); todo.append(n)
    return seen

def test_training_stands_on_nothing_of_the_study():
    g = graph()
    assert not reaches(g, 'sr3d.train') & {'sr3d.study', 'sr3d.slurm', 'sr3d.cli', 'sr3d.report', 'sr3d.grids'}
    assert 'sr3d.slurm' not in reaches(g, 'sr3d.study')

def test_no_module_over_400_lines():
    sizes = {module_name(p): len(p.read_text().splitlines()) for p in PKG.rglob('*.py') if p.name != '_modidx.py'}
    assert not {m: n for m, n in sizes.items() if n > 400}
