"""Records travel: no committed file names this machine's folders (nor a venv's or a home folder's), and a clone at another path with no data/
runs the README's study command (nothing retrained) and its summary notebook."""
import json, os, re, shutil, subprocess, sys
from pathlib import Path
from sr3d.study import failed_copy, notebook_error

ROOT = Path(__file__).resolve().parents[1]
# an absolute path into a home, work or temporary folder (not a URL's path, nor a relative or ~ path)
MACHINE_PATH = re.compile(r'(?<![\w.~:/-])/(?:home|root|Users|work|tmp|var/tmp|private/var/folders)/[^\s"\'<>]{0,60}')

def committed(*where) -> list[str]:
    out = subprocess.run(['git', 'ls-files', '-z', '--', *where], cwd=ROOT, capture_output=True, text=True, check=True)
    return [f for f in out.stdout.split('\0') if f]

def machine_paths(root: Path, files) -> list[str]:
    "`file: path` for every machine path in the text files among `files` (under `root`)."
    hits = []
    for f in files:
        try: text = (root/f).read_text()
        except (UnicodeDecodeError, IsADirectoryError, FileNotFoundError): continue  # images, weights
        hits += [f"{f}: {m.group(0)}" for m in MACHINE_PATH.finditer(text)]
    return hits

def test_the_machine_path_pattern():
    text = 'a /tmp/x, "/home/u/sr3d", /work/main/data; not data/tmp/x, ~/.cache/x, https://h.org/home/x or <tmp>/x'
    assert [m.group(0) for m in MACHINE_PATH.finditer(text)] == ['/tmp/x,', '/home/u/sr3d', '/work/main/data;']

# a venv's packages or a home folder: where one machine keeps things (records name weights by `weights_location`)
HOME_OR_VENV = re.compile(r'site-packages/|(?<![\w.])~/')

def notebook_outputs(path: Path) -> str:
    "The text of a notebook's outputs (its sources may document a default folder; its outputs are records)."
    cells = json.loads(path.read_text())['cells']
    return json.dumps([c.get('outputs', []) for c in cells])

def test_records_and_notebook_outputs_hold_no_venv_or_home_paths():
    hits = []
    for f in committed('outputs', 'nbs'):
        if f.endswith(('.png', '.pt')): continue
        text = notebook_outputs(ROOT/f) if f.endswith('.ipynb') else (ROOT/f).read_text()
        hits += [f"{f}: {m.group(0)}" for m in HOME_OR_VENV.finditer(text)]
    hits += [f"README.md: {m.group(0)}" for m in re.finditer('site-packages/', (ROOT/'README.md').read_text())]
    assert not hits, 'venv or home paths in committed records or notebook outputs:\n' + '\n'.join(hits[:20])

def test_committed_files_hold_no_machine_paths():
    hits = machine_paths(ROOT, committed('outputs', 'nbs', 'README.md'))
    assert not hits, 'absolute machine paths in committed files (make them relative to the project root):\n' + '\n'.join(hits[:20])

def test_a_clone_elsewhere_runs_the_study_and_its_summary(tmp_path):
    "README's `sr3d_study --preset demo` in a fresh clone at another path, with that clone's package: exit 0, no retraining."
    clone = tmp_path/'elsewhere'/'sr3d'
    subprocess.run(['git', 'clone', '-q', str(ROOT), str(clone)], check=True)
    assert not (clone/'data').exists()
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(clone), os.environ.get('PYTHONPATH', '')])}
    env.pop('IN_TEST', None)
    which = subprocess.run([sys.executable, '-c', 'import sr3d; print(sr3d.__file__)'], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert Path(which.strip()).is_relative_to(clone), which
    study = shutil.which('sr3d_study') or 'sr3d_study'
    p = subprocess.run([study, '--preset', 'demo'], cwd=clone, env=env, capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    state = json.loads((clone/'outputs/demo/study.json').read_text())
    assert {r['status'] for r in state['runs'].values()} == {'finished'}
    assert f"{len(state['runs'])} runs finished" in p.stdout
    changed = subprocess.run(['git', 'status', '--porcelain', '--', 'outputs/demo/runs'], cwd=clone, capture_output=True,
                             text=True, check=True).stdout
    assert changed == '', f'runs were retrained or rewritten:\n{changed}'
    assert (clone/'data/demo/list.csv').exists(), 'the clone prepares its own demo data'
    summary = clone/'outputs/demo/summary.ipynb'
    assert notebook_error(summary) is None and not failed_copy(summary).exists()
    nb = json.loads(summary.read_text())
    assert nb['metadata']['papermill']['parameters']['study'] == 'outputs/demo'
    assert nb['metadata']['papermill']['end_time'] > json.loads((ROOT/'outputs/demo/summary.ipynb').read_text())[
        'metadata']['papermill']['end_time'], 'the summary was executed again'
    written = ['outputs/demo/summary.ipynb', 'outputs/demo/tables.md'] + committed('outputs/demo/runs')
    assert not [h for h in machine_paths(clone, written) if '/elsewhere/' in h or str(ROOT) in h]
    assert not machine_paths(clone, written)
