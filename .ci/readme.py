"""Build README.md from nbs/index.ipynb (nbdev's README source), executing it so its tables come from files.

Markdown cells are copied; code cells marked `#| hide` are run but not shown; `#| echo: false` shows only
their output. `--check` fails when README.md is not what the notebook produces (CI runs that).
"""
import os, sys
from pathlib import Path
from execnb.nbio import read_nb
from execnb.shell import CaptureShell

root = Path(__file__).resolve().parents[1]

def directives(src: str) -> set[str]:
    return {l[3:].strip() for l in src.splitlines() if l.startswith('#| ')}

def render() -> str:
    nb = read_nb(root/'nbs'/'index.ipynb')
    os.chdir(root/'nbs')
    sh = CaptureShell(); sh.run_all(nb, exc_stop=True)
    out = ['<!-- generated from nbs/index.ipynb by .ci/readme.py: edit the notebook, not this file -->\n']
    for c in nb.cells:
        if c.cell_type == 'markdown': out.append(c.source + '\n'); continue
        d = directives(c.source)
        if 'hide' in d: continue
        if 'echo: false' not in d:
            out.append('```python\n' + '\n'.join(l for l in c.source.splitlines() if not l.startswith('#|')) + '\n```\n')
        for o in c.get('outputs', []):
            data = o.get('data', {})
            if 'text/markdown' in data: out.append(''.join(data['text/markdown']) + '\n')
            elif 'text/plain' in data: out.append('```\n' + ''.join(data['text/plain']) + '\n```\n')
            elif o.get('output_type') == 'stream': out.append('```\n' + ''.join(o['text']) + '```\n')
    return '\n'.join(out).rstrip() + '\n'

if __name__ == '__main__':
    text = render()
    if '--check' in sys.argv:
        if (root/'README.md').read_text() != text:
            sys.exit('README.md is out of date with nbs/index.ipynb: run `python .ci/readme.py`')
        print('README.md is up to date')
    else:
        (root/'README.md').write_text(text); print('wrote README.md')
