"""The study end to end at tiny scale: runs through papermill, a failure recorded, resume and kill-and-rerun."""
import json, signal, subprocess, sys, time
from pathlib import Path
import pytest, yaml
from sr3d.grids import Grid
from sr3d.study import NOTEBOOK, SUMMARY, NotebookFailed, execute, failed_copy, notebook_error, run_study

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(nf=8, gc=4, d_nf=4, patches_per_volume=1, batch_size=4, epochs=1, mixed_precision='no')
BASE = dict(vgg_n=0, n_rrdb=1, patch='4,4,3', vgg_resize='native')

def statuses(d): return {n: r['status'] for n, r in json.loads((d/'study.json').read_text())['runs'].items()}

def test_study_runs_records_failure_and_resumes(tmp_path, small_data):
    broken = [{'vgg_n': 2, 'weights': '/nowhere/vgg16.pth'}]  # the perceptual loss needs a VGG16 file that is not there
    grid = Grid('demo', BASE, {'VGG': {'vgg_n': [0, 2]}, 'broken': broken, 'bad': {'patch': ['99,99,99']}}, TINY)
    out = run_study(grid, tmp_path/'s', data=small_data)
    st = statuses(out)
    assert st == {'baseline': 'finished', 'vgg_n=2': 'finished',
                  'vgg_n=2-weights=_nowhere_vgg16.pth': 'failed', 'patch=99x99x99': 'failed'}
    runs = json.loads((out/'study.json').read_text())['runs']
    assert 'vgg16.pth' in runs['vgg_n=2-weights=_nowhere_vgg16.pth']['error']
    assert 'larger than the LR volume' in runs['patch=99x99x99']['error']
    for n in ('baseline', 'vgg_n=2'):
        assert (out/'runs'/f'{n}.ipynb').exists() and (out/'runs'/n/'metrics.json').exists()
    tables = (out/'tables.md').read_text()
    assert '## VGG' in tables and 'tricubic convolution' in tables and (out/'vgg.csv').exists()
    assert (out/'summary.ipynb').exists() and (out/'figures'/'figure_41.png').exists()
    # no configuration has two seeds, so no seed-aware difference to draw: the summary says so instead of a figure
    assert not (out/'figures'/'lever_effects.png').exists() and 'Nothing to plot' in (out/'summary.ipynb').read_text()

    # again: finished runs are skipped (their notebooks untouched), a changed configuration is not taken for finished
    nb = out/'runs'/'baseline.ipynb'; before = nb.stat().st_mtime_ns
    changed = out/'runs'/'vgg_n=2'/'config.json'
    c = json.loads(changed.read_text()); c['config_hash'] = 'deadbeef'; changed.write_text(json.dumps(c))
    run_study(grid, out, data=small_data, summary=False)
    assert nb.stat().st_mtime_ns == before
    assert statuses(out)['vgg_n=2'] == 'finished'
    assert json.loads(changed.read_text())['config_hash'] != 'deadbeef'
    assert len(list((out/'runs'/'.superseded').iterdir())) == 1

def test_killed_study_finishes_the_rest(tmp_path, small_data):
    spec = tmp_path/'grid.yaml'
    spec.write_text(yaml.safe_dump(dict(preset='demo', baseline=BASE, tables={'VGG': {'vgg_n': [0, 2]}}, overrides=TINY)))
    cmd = [sys.executable, '-c', 'from sr3d.cli import study_cli; study_cli()', '--grid', str(spec), '--out', str(tmp_path/'s'), '--data', small_data]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path/'s'/'study.json'
    while p.poll() is None and not (state.exists() and 'finished' in statuses(tmp_path/'s').values()):
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL); p.wait()
    st = statuses(tmp_path/'s')
    assert list(st.values()).count('finished') == 1, st
    first = next(n for n, s in st.items() if s == 'finished')
    before = (tmp_path/'s'/'runs'/f'{first}.ipynb').stat().st_mtime_ns
    time.sleep(3)  # the killed study's papermill child receives SIGTERM and stops
    assert subprocess.run(cmd, cwd=ROOT, capture_output=True).returncode == 0
    assert set(statuses(tmp_path/'s').values()) == {'finished'}
    assert (tmp_path/'s'/'runs'/f'{first}.ipynb').stat().st_mtime_ns == before
    assert (tmp_path/'s'/'summary.ipynb').exists()

def test_two_studies_keep_to_their_folders(tmp_path, small_data):
    a = Grid('demo', BASE, {'VGG': {'vgg_n': [0]}}, TINY)
    run_study(a, tmp_path/'a', data=small_data, summary=False)
    b = Grid('demo', BASE, {'VGG': {'vgg_n': [0]}}, dict(TINY, epochs=2))
    try: run_study(b, tmp_path/'a', data=small_data, summary=False); raise AssertionError('a different grid was run into the same folder')
    except ValueError as e: assert 'different grid' in str(e)
    run_study(b, tmp_path/'b', data=small_data, summary=False)
    assert json.loads((tmp_path/'a'/'runs'/'baseline'/'config.json').read_text())['config']['epochs'] == 1
    assert json.loads((tmp_path/'b'/'runs'/'baseline'/'config.json').read_text())['config']['epochs'] == 2

def test_a_failed_execution_leaves_the_record_it_meant_to_refresh(tmp_path, small_data):
    "A run notebook or summary that fails keeps the old executed notebook as it was, and names the failed copy."
    record = '{"cells": [], "the": "committed record"}'
    for notebook, params in ((SUMMARY, dict(study=str(tmp_path/'no-study'))),
                             (NOTEBOOK, dict(patch='99,99,99', data=small_data, run_dir=str(tmp_path/'run')))):
        out = tmp_path/f'{Path(notebook).stem}.ipynb'
        out.write_text(record)
        with pytest.raises(NotebookFailed) as e: execute(notebook, out, params)
        assert out.read_text() == record, f'{notebook}: the failed execution replaced the record'
        failed = failed_copy(out)
        assert failed.name in str(e.value) and notebook_error(failed) is not None
        assert not list(tmp_path.glob('.*.running.ipynb'))
    assert 'larger than the LR volume' in str(e.value)
    execute(NOTEBOOK, out, dict(TINY, **BASE, data=small_data, run_dir=str(tmp_path/'run')))  # now it runs
    nb = json.loads(out.read_text())
    assert nb['metadata']['papermill']['output_path'] == str(out) and notebook_error(out) is None
    assert not failed_copy(out).exists(), 'a stale failed copy outlived the successful execution'
