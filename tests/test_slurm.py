"""The study on a real single-node Slurm cluster: a job array, a requeued task that resumes, a task killed hard, the
summary job, no duplicate submissions; and two training processes launched by srun, equal to two launched here.

The cluster is the one `.ci/slurm.sh start` runs (CI starts it before the tests); when none answers, this module starts
one with that script and stops it afterwards. Without Slurm installed these tests fail, unless SR3D_SKIP_SLURM=1 says
that Slurm is not expected here (CI never sets it)."""
import json, os, shlex, shutil, subprocess, sys, time
from pathlib import Path
import pandas as pd, pytest, torch, yaml
from sr3d.grids import Grid, grid_runs
from sr3d.study import run_settings
from sr3d.slurm import SlurmOptions, array_script, queue, run_rows, submissions, submit_study

ROOT = Path(__file__).resolve().parents[1]
CONF = Path(os.environ.get('SR3D_SLURM_DIR', '/tmp/sr3d-slurm'))/'slurm.conf'
LAUNCH = "import json, sys; from sr3d.train import make_config, launch; launch(make_config('demo', **json.loads(sys.argv[1])))"
# 24 patches of 4 volumes in batches of 4: 24 steps, an epoch of a few seconds, the window in which a task is requeued
TINY = dict(nf=8, gc=4, d_nf=4, patches_per_volume=24, batch_size=4, epochs=2, ckpt_every=1, mixed_precision='no')
GRID = Grid('demo', dict(vgg_n=0, n_rrdb=1, patch='4,4,3', vgg_resize='native'), {'VGG': {'vgg_n': [0, 2]}}, TINY)
A, B = 'baseline', 'vgg_n=2'  # A is requeued mid-run, B is killed

def answers() -> bool:
    return subprocess.run(['sinfo', '--noheader'], capture_output=True, timeout=30).returncode == 0

@pytest.fixture(scope='module')
def cluster():
    "This project's test cluster (SLURM_CONF): the one running, or one started here and stopped afterwards."
    if os.environ.get('SR3D_SKIP_SLURM') == '1': pytest.skip('SR3D_SKIP_SLURM=1: Slurm is not expected on this machine')
    before = os.environ.get('SLURM_CONF')
    os.environ['SLURM_CONF'] = str(CONF)  # never a cluster of the machine's own: jobs here are requeued and killed
    started = not (shutil.which('sinfo') and CONF.exists() and answers())
    if started:
        p = subprocess.run([str(ROOT/'.ci/slurm.sh'), 'start'], capture_output=True, text=True, timeout=600)
        if p.returncode or not shutil.which('sbatch'):
            pytest.fail(f"no Slurm cluster: `.ci/slurm.sh start` (installs Debian's Slurm, needs root or sudo) failed: "
                        f"{p.stderr[-2000:]}; set SR3D_SKIP_SLURM=1 where Slurm is not expected")
    yield
    if started: subprocess.run([str(ROOT/'.ci/slurm.sh'), 'stop'], check=True, timeout=120)
    if before is None: del os.environ['SLURM_CONF']
    else: os.environ['SLURM_CONF'] = before

def wait_for(cond, timeout: float, what: str) -> float:
    "Seconds until `cond()` held; fails after `timeout`."
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout: raise AssertionError(f'{what}: not within {timeout} s')
        time.sleep(0.1)
    return time.time() - t0

def status(out: Path, name: str, data: str) -> dict:
    return next(r for r in run_rows(GRID, out, data) if r['run'] == name)

def weights(run: Path) -> dict: return torch.load(run/'generator.pt', weights_only=True)['state_dict']

def test_gres_reaches_slurm(cluster, tmp_path):
    "The array script's --gres line is one Slurm accepts, and refuses beyond the node's (fake) GPUs."
    for gpus, ok in ((1, True), (3, False)):
        script = tmp_path/f'{gpus}.sh'
        script.write_text(array_script(tmp_path/'s', [A, B], SlurmOptions(gpus_per_run=gpus)))
        p = subprocess.run(['sbatch', '--test-only', str(script)], capture_output=True, text=True)
        assert (p.returncode == 0) == ok, p.stderr

def test_study_on_slurm(cluster, tmp_path, small_data, monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '1')  # the jobs inherit it: one thread per run, as the reference
    out, data = tmp_path/'s', small_data
    # the reference: A's configuration trained uninterrupted, here, while the cluster works
    ref = run_settings(GRID, A, grid_runs(GRID)[A], tmp_path/'ref', data)
    del ref['preset']  # demo, as LAUNCH says
    reference = subprocess.Popen([sys.executable, '-c', LAUNCH, json.dumps(ref)], cwd=ROOT, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)

    assert 'submitted 2 runs' in submit_study(GRID, out, data, SlurmOptions(jobs=2, gpus_per_run=0))
    [sub] = submissions(out)
    array, summary = sub['array'], sub['summary']
    assert 'nothing to submit' in submit_study(GRID, out, data, SlurmOptions(jobs=2, gpus_per_run=0))
    assert len(submissions(out)) == 1 and sum(j.startswith(f'{array}_') for j in queue()) == 2

    # requeue A once its first epoch is checkpointed and before its last: it must resume, not restart
    run_a = out/'runs'/A
    wait_for(lambda: (run_a/'checkpoints'/'last.pt').exists(), 300, 'the first checkpoint of A')
    subprocess.run(['scontrol', 'requeue', f'{array}_0'], check=True)
    assert not (run_a/'generator.pt').exists(), 'A finished before it could be requeued'

    # kill B hard (SIGKILL to every process of the task): no record of its end, no metrics.json
    wait_for(lambda: (out/'runs'/B/'config.json').exists(), 300, 'B starts training')
    subprocess.run(['scancel', '--full', '--signal=KILL', f'{array}_1'], check=True)
    killed, slowest = time.time(), 0.0
    def reads_failed():
        nonlocal slowest
        t0 = time.time()
        failed = status(out, B, data)['status'] == 'failed'
        slowest = max(slowest, time.time() - t0)
        return failed
    wait_for(reads_failed, 60, 'B read as failed')
    assert slowest < 30, f'a status query took {slowest:.1f} s'
    print(f'B read as failed {time.time() - killed:.1f} s after it was killed; slowest status query {slowest:.1f} s')
    assert 'killed' in status(out, B, data)['detail'] or 'CANCELLED' in status(out, B, data)['detail']

    # A resumes and finishes; the summary job runs after both tasks have ended, whatever their outcome
    wait_for(lambda: status(out, A, data)['status'] == 'finished', 400, 'A finished after its requeue')
    def summary_done(): return queue().get(summary, ('PENDING',))[0] not in ('PENDING', 'RUNNING', 'CONFIGURING', 'COMPLETING')
    wait_for(summary_done, 300, 'the summary job ended')
    assert queue()[summary][0] == 'COMPLETED', queue()[summary]
    assert (out/'summary.ipynb').exists() and (out/'tables.md').exists()
    runs = json.loads((out/'study.json').read_text())['runs']
    assert runs[A]['status'] == 'finished' and runs[B]['status'] == 'failed' and runs[B]['error']

    # A ran as a local study runs it (the executed notebook), twice, and resumed after its first epoch
    assert json.loads((out/'slurm'/'tasks'/f'{A}.json').read_text())['attempt'] == 1
    log = (out/'slurm'/f'{array}_0.log').read_text()  # appended to, not truncated, by the requeue
    assert f'{A}: task {array}_0, attempt 0' in log and f'{A}: task {array}_0, attempt 1' in log
    assert f'resuming {A} after epoch 1' in (out/'runs'/f'{A}.ipynb').read_text()
    assert (run_a/'metrics.json').exists()
    assert reference.wait(timeout=600) == 0, reference.stderr.read()[-3000:]
    a, r = weights(run_a), weights(tmp_path/'ref'/'runs'/A)
    assert a.keys() == r.keys() and all(torch.equal(a[k], r[k]) for k in a), 'the requeued run differs from the reference'

    # the command line's view
    spec = tmp_path/'grid.yaml'
    spec.write_text(yaml.safe_dump(dict(preset='demo', baseline=GRID.baseline, tables=GRID.tables, overrides=TINY)))
    p = subprocess.run([sys.executable, '-c', 'from sr3d.cli import study_cli; study_cli()', '--grid', str(spec),
                        '--out', str(out), '--status'], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith('1 finished, 1 failed') and f'| {B} | failed | {array}_1 |' in p.stdout, p.stdout

    # submitting again submits what did not finish, and only that
    submit_study(GRID, out, data, SlurmOptions(jobs=2, gpus_per_run=0))
    again = submissions(out)[-1]
    subprocess.run(['scancel', again['array'], again['summary']], check=True)
    assert len(submissions(out)) == 2 and again['runs'] == [B]

def test_two_processes_under_slurm_equal_two_here(cluster, tmp_path, small_data, monkeypatch):
    "Two gloo processes started by srun (rendezvous from Slurm's environment) train the weights two local ones do."
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    kw = dict(nf=8, gc=4, n_rrdb=1, d_nf=4, patch='4,4,3', patches_per_volume=4, batch_size=4, vgg_n=0, epochs=2,
              num_processes=2, mixed_precision='no', data=small_data)
    script = tmp_path/'two.sh'
    script.write_text(f"#!/bin/bash\nexec {shlex.quote(sys.executable)} -c {shlex.quote(LAUNCH)} "
                      f"{shlex.quote(json.dumps(dict(kw, run_dir=str(tmp_path/'slurm'))))}\n")
    job = subprocess.Popen(['sbatch', '--wait', f'--chdir={ROOT}', f'--output={tmp_path}/slurm.log', str(script)],
                           stdout=subprocess.DEVNULL)
    here = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_') or k == 'SLURM_CONF'}
    local = subprocess.run([sys.executable, '-c', LAUNCH, json.dumps(dict(kw, run_dir=str(tmp_path/'local')))], cwd=ROOT,
                           env=here, capture_output=True, text=True, timeout=600)
    assert local.returncode == 0, local.stderr[-3000:]
    assert '--standalone' in local.stdout
    assert job.wait(timeout=600) == 0, (tmp_path/'slurm.log').read_text()[-3000:]
    log = (tmp_path/'slurm.log').read_text()
    assert 'launching: srun' in log and '--nnodes=1 --node_rank=0' in log and '--nproc_per_node=2' in log, log[-3000:]
    a, b = weights(tmp_path/'slurm'), weights(tmp_path/'local')
    assert all(torch.equal(a[k], b[k]) for k in a)
    logs = [pd.read_csv(tmp_path/d/'log.csv').drop(columns=['seconds', 'data_seconds', 'load'])  # the losses, not the clock
            for d in ('slurm', 'local')]
    pd.testing.assert_frame_equal(*logs, check_exact=True)
