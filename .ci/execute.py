"""Execute source notebooks in place, as `nbdev_test` runs them, so that JupyterLab and a repository page show
what each one computes: from `nbs/`, with IN_TEST=1 (the train notebook shrinks itself to a tiny run), the export
cell left out, and `#| slow` cells left with the outputs they have unless `--slow` is given. Run `nbdev_clean` after.

    python .ci/execute.py                      # every notebook in nbs/
    python .ci/execute.py nbs/data.ipynb --slow
"""
import os, sys
from pathlib import Path
from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell

root = Path(__file__).resolve().parents[1]

def directives(src: str) -> set[str]:
    return {l[3:].strip() for l in src.splitlines() if l.startswith('#| ')}

def execute(path: Path, slow: bool = False):
    "Run the notebook at `path` top to bottom in a fresh shell and write it back with its outputs."
    nb = read_nb(path)
    def skip(cell):
        d = directives(cell.source)
        return cell.cell_type != 'code' or 'nbdev_export(' in cell.source or 'eval: false' in d or ('slow' in d and not slow)
    for cell in nb.cells:  # a cell that now prints nothing must not keep what an older run printed
        if cell.cell_type == 'code' and not skip(cell): cell.outputs = []
    os.environ['IN_TEST'] = '1'
    cwd = os.getcwd()
    os.chdir(path.parent)
    try: CaptureShell(path).run_all(nb, exc_stop=True, preproc=skip)
    finally: os.chdir(cwd)
    write_nb(nb, path)

if __name__ == '__main__':
    args = [a for a in sys.argv[1:] if a != '--slow']
    for p in [Path(a).resolve() for a in args] or sorted((root/'nbs').glob('*.ipynb')):
        if p.name == 'summary.ipynb': continue  # a template for a study's folder, executed there by sr3d_study
        print('executing', p.relative_to(root), flush=True)
        execute(p, '--slow' in sys.argv)
