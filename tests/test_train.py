"""Training end to end: papermill, two processes, kill-and-resume, invalid parameters, a non-finite loss."""
import json, signal, subprocess, sys, time
from pathlib import Path
import numpy as np, pytest, torch
import papermill as pm
import sr3d.train as T
from sr3d.data import PatchPairs, save_volume
from sr3d.prepare import prepare_folder, read_list
from sr3d.model import Discriminator, Generator, load_generator
from sr3d.losses import Perceptual25D

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(nf=8, gc=4, n_rrdb=1, d_nf=4, patch='4,4,3', patches_per_volume=4, batch_size=4, vgg_n=2, mixed_precision='no')

def tiny(tmp_path, name, data, **kw): return T.make_config('demo', **{**TINY, 'data': data, 'run_dir': str(tmp_path/name), **kw})

def run_py(code: str, *args, **popen):
    "Run `code` in a fresh Python process (each process trains as a user's would)."
    return subprocess.Popen([sys.executable, '-c', code, *args], cwd=ROOT, **popen)

LAUNCH = "import json, sys; from sr3d.train import make_config, launch; launch(make_config('demo', **json.loads(sys.argv[1])))"

@pytest.mark.parametrize('vgg_n', [20, 'full'])
def test_papermill_records_vgg_n(tmp_path, vgg_n, small_data):
    run = tmp_path/'run'
    pm.execute_notebook(ROOT/'nbs/train.ipynb', tmp_path/'out.ipynb', cwd=ROOT/'nbs', progress_bar=False,
                        parameters=dict(vgg_n=vgg_n, patch='6,6,5', run_dir=str(run), epochs=1, data=small_data))
    cfg = json.loads((run/'config.json').read_text())
    assert cfg['config']['vgg_n'] == vgg_n and cfg['config']['patch'] == '6,6,5'
    assert cfg['provenance']['versions']['torch'] == torch.__version__
    assert (run/'generator.pt').exists() and (run/'metrics.json').exists() and (tmp_path/'out.ipynb').exists()
    assert len((run/'log.csv').read_text().splitlines()) == 2

def test_papermill_invalid_parameter_stops_before_training(tmp_path, small_data):
    with pytest.raises(pm.PapermillExecutionError, match='larger than the LR volume'):
        pm.execute_notebook(ROOT/'nbs/train.ipynb', tmp_path/'out.ipynb', cwd=ROOT, progress_bar=False,
                            parameters=dict(patch='99,99,99', run_dir=str(tmp_path/'run'), data=small_data))
    assert not (tmp_path/'run').exists()

def test_papermill_refuses_a_precision_the_device_cannot_run(tmp_path, small_data):
    "fp16 on a CPU would train in float32 while the record says fp16: refused by name, before the run folder exists."
    if torch.cuda.is_available(): pytest.skip('a CUDA device computes fp16')
    with pytest.raises(pm.PapermillExecutionError, match="mixed_precision: 'fp16' cannot run on a CPU"):
        pm.execute_notebook(ROOT/'nbs/train.ipynb', tmp_path/'out.ipynb', cwd=ROOT/'nbs', progress_bar=False,
                            parameters=dict(mixed_precision='fp16', run_dir=str(tmp_path/'run'), data=small_data))
    assert not (tmp_path/'run').exists()

def test_d_lr_says_what_it_does():
    "`-p d_lr None` is the preset's value (as every None parameter is); the thesis's 'same as lr' is asked for as 'lr'."
    preset = T.make_config('demo', check_data=False)
    assert preset.d_lr is not None and preset.d_lr != preset.lr, 'the demo preset gives D a learning rate of its own'
    for d_lr, want in ((None, preset.d_lr), ('lr', preset.lr), (1e-3, 1e-3)):
        c = T.make_config('demo', check_data=False, d_lr=d_lr)
        assert T.build(c).opt_d.param_groups[0]['lr'] == want

def _ddp_step(out: str):
    "Run in each of two processes by Accelerate's debug launcher: one training step on different data per process."
    from accelerate import Accelerator
    acc = Accelerator(cpu=True)
    m = T.build(T.make_config('demo', check_data=False, **dict(TINY, vgg_n=0)))
    m.G, m.D, m.opt_g, m.opt_d = acc.prepare(m.G, m.D, m.opt_g, m.opt_d)
    g = torch.Generator().manual_seed(acc.process_index)  # different data in each process
    batch = (torch.rand(2, 1, 4, 4, 3, generator=g), torch.rand(2, 1, 16, 16, 12, generator=g), torch.zeros(2, dtype=torch.long))
    T.train_step(m, batch, T.make_config('demo', check_data=False, **TINY), acc)
    def flat(net, grad): return torch.cat([(p.grad if grad else p.detach()).flatten() for p in acc.unwrap_model(net).parameters()])[None]
    res = {f'{n}_{k}': bool(torch.equal(*acc.gather(flat(net, k == 'grad')))) for n, net in (('G', m.G), ('D', m.D)) for k in ('grad', 'weight')}
    if acc.is_main_process: Path(out).write_text(json.dumps(dict(res, world=acc.num_processes)))

def test_two_processes_synchronise_gradients(tmp_path):
    "Two gloo processes that see different data end a step with the same gradients and weights."
    # Accelerate's debug launcher forks; a process that has already run torch's thread pools can hang when forked,
    # so it runs from this file in a fresh interpreter (see the end of the file)
    p = subprocess.run([sys.executable, __file__, str(tmp_path/'res.json')], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((tmp_path/'res.json').read_text()) == dict(G_grad=True, G_weight=True, D_grad=True, D_weight=True, world=2)

def test_launch_two_processes(tmp_path, small_data):
    "The notebook's own path for num_processes > 1: torchrun on sr3d.train, same code as one process."
    c = tiny(tmp_path, 'two', small_data, num_processes=2, epochs=1)
    run = T.launch(c)
    assert (run/'generator.pt').exists() and (run/'checkpoints/last.pt').exists()
    assert torch.load(run/'checkpoints/last.pt', weights_only=True)['epoch'] == 1

def test_kill_and_resume_gives_identical_weights(tmp_path, small_data):
    "A run killed mid-way and resumed ends with the weights of an uninterrupted one, its moving average (ema) included."
    kw = dict(TINY, epochs=8, ckpt_every=1, data=small_data, ema=0.9)
    ref = run_py(LAUNCH, json.dumps(dict(kw, run_dir=str(tmp_path/'ref'))), stderr=subprocess.DEVNULL)
    assert ref.wait(timeout=600) == 0
    args = json.dumps(dict(kw, run_dir=str(tmp_path/'cut')))
    p = run_py(LAUNCH, args, stderr=subprocess.DEVNULL)
    log = tmp_path/'cut'/'log.csv'
    while p.poll() is None and not (log.exists() and len(log.read_text().splitlines()) >= 3):  # two epochs done
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL); p.wait()
    assert not (tmp_path/'cut'/'generator.pt').exists(), 'the run finished before it could be killed'
    assert run_py(LAUNCH, args, stderr=subprocess.DEVNULL).wait(timeout=600) == 0
    a, b = (torch.load(tmp_path/d/'generator.pt', weights_only=True) for d in ('ref', 'cut'))
    assert a['meta']['weights'] == 'ema (decay 0.9)'
    assert all(torch.equal(a['state_dict'][k], b['state_dict'][k]) for k in a['state_dict'])
    assert (tmp_path/'ref/log.csv').read_text().splitlines()[1:] != []
    ref_log, cut_log = (np.genfromtxt(tmp_path/d/'log.csv', delimiter=',', names=True) for d in ('ref', 'cut'))
    np.testing.assert_array_equal(ref_log['total'], cut_log['total'])

def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch, small_data):
    c = tiny(tmp_path, 'nan', small_data, epochs=3, vgg_n=0, ckpt_every=1)
    calls = {'n': 0}; real = T.generator_loss
    def poisoned(*a, **k):
        t = real(*a, **k); calls['n'] += 1
        if calls['n'] == 6: t['total'] = t['total'] * float('nan')  # epoch 2, second step (4 steps per epoch)
        return t
    monkeypatch.setattr(T, 'generator_loss', poisoned)
    with pytest.raises(T.NonFiniteLoss, match='last good checkpoint is .*last.pt'):
        T.launch(c)
    # the demo preset checkpoints every 5 epochs: the error then says there is none, and why
    calls['n'] = 0
    with pytest.raises(T.NonFiniteLoss, match=r'checkpoint is none \(checkpoints are saved every 5 epochs\)'):
        T.launch(tiny(tmp_path, 'nan5', small_data, epochs=3, vgg_n=0))
    assert not (tmp_path/'nan5'/'checkpoints'/'last.pt').exists()
    ckpt = tmp_path/'nan'/'checkpoints'/'last.pt'
    assert torch.load(ckpt, weights_only=True)['epoch'] == 1
    g = load_generator(ckpt)
    assert all(torch.isfinite(p).all() for p in g.parameters())
    assert not (tmp_path/'nan'/'generator.pt').exists()

def test_schedule_sets_the_loss_n_every_epoch_and_the_run_records_it(tmp_path, monkeypatch, small_data):
    "vgg_n_schedule with importance sampling: the loss draws each epoch's n; log.csv records n and the VGG images."
    drawn, real = [], T.Perceptual25D.importance_draw
    def spy(self, hr):
        idx, w = real(self, hr)
        drawn.append(tuple(idx[0].shape))
        return idx, w
    monkeypatch.setattr(T.Perceptual25D, 'importance_draw', spy)
    c = tiny(tmp_path, 'sched', small_data, epochs=3, vgg_n=1, vgg_n_schedule='linear:1:3', vgg_sampling='importance')
    run = T.launch(c)
    log = np.genfromtxt(run/'log.csv', delimiter=',', names=True)
    steps, batch = int(log['steps'][0]), TINY['batch_size']
    assert drawn == [(batch, n) for n in (1, 2, 3) for _ in range(steps)]  # each volume its own n slices per plane
    assert list(log['vgg_n']) == [1, 2, 3]
    assert list(log['vgg_images']) == [steps * batch * 3 * n for n in (1, 2, 3)]
    assert torch.load(run/'generator.pt', weights_only=True)['meta']['vgg_images'] == log['vgg_images'].sum()
    cfg = json.loads((run/'config.json').read_text())['config']
    assert (cfg['vgg_n_schedule'], cfg['vgg_sampling']) == ('linear:1:3', 'importance')

def test_changed_configuration_is_not_mixed_into_a_run(tmp_path, small_data):
    c = tiny(tmp_path, 'r', small_data, epochs=1); T.open_run(c)
    other = tiny(tmp_path, 'r', small_data, epochs=2)
    with pytest.raises(T.ConfigError, match='different configuration'): T.open_run(other)

def test_paper_preset_builds(tmp_path):
    "The thesis's configuration validates against MSD-sized data and its models run a batch (shapes on the meta device)."
    src = tmp_path/'hr'; src.mkdir()
    for i in range(2): save_volume(np.random.default_rng(i).random((120, 120, 80), dtype=np.float32) + 0.1, np.eye(4), src/f's{i}.nii.gz')
    lf = prepare_folder(src, out=tmp_path/'prep', test_fraction=0.5)
    c = T.make_config('paper', data=str(lf), patches_per_volume=16)
    assert (c.nf, c.gc, c.n_rrdb, c.patch, c.batch_size, c.vgg_n, c.vgg_resize, c.mixed_precision) == (64, 32, 10, '30,30,20', 16, 10, 224, 'bf16')
    with torch.device('meta'):
        G, D = Generator(c.nf, c.gc, c.n_rrdb), Discriminator(c.n_classes, c.d_nf)
        sr = G(torch.empty(16, 1, 30, 30, 20))
        assert sr.shape == (16, 1, 120, 120, 80)
        assert D(torch.cat([sr, sr]), torch.zeros(32, dtype=torch.long)).shape == (32,)
    p = Perceptual25D(c.vgg_n, c.vgg_resize, weights='random').to('meta')
    assert p(sr, sr).shape == ()
    assert sum(x.numel() for x in G.parameters()) == 23_455_873

if __name__ == '__main__':  # what test_two_processes_synchronise_gradients runs
    from accelerate import debug_launcher
    debug_launcher(_ddp_step, args=(sys.argv[1],), num_processes=2)


def test_papermill_refuses_a_misspelt_parameter(tmp_path, small_data):
    "`-p vgg_N 20` (papermill only warns) is refused by name with the nearest known parameter, before a run folder exists."
    with pytest.raises(pm.PapermillExecutionError, match=r"papermill: unknown parameter 'vgg_N' \(did you mean 'vgg_n'\?\)"):
        pm.execute_notebook(ROOT/'nbs/train.ipynb', tmp_path/'out.ipynb', cwd=ROOT/'nbs', progress_bar=False,
                            parameters=dict(vgg_N=20, run_dir=str(tmp_path/'run'), data=small_data))
    assert not (tmp_path/'run').exists()

def test_a_seed_drives_every_draw_and_repeats_bit_for_bit(tmp_path, small_data):
    "Initialisation (G and D), patch positions, batch order and slice draws all follow the run's seed."
    c0, c1 = (tiny(tmp_path, f's{k}', small_data, seed=k, patch_mode='random') for k in (0, 1))
    m0, m1 = T.build(c0), T.build(c1)
    for net in ('G', 'D'):
        assert not torch.equal(next(getattr(m0, net).parameters()), next(getattr(m1, net).parameters())), net
    ds = [PatchPairs(read_list(small_data, 'train'), c.patch, c.patches_per_volume, c.patch_mode, c.seed) for c in (c0, c1)]
    assert not np.array_equal(ds[0].corner(3, epoch=2), ds[1].corner(3, epoch=2))
    assert T.epoch_batches(16, 4, 2, 0) != T.epoch_batches(16, 4, 2, 1)
    hr = torch.rand(2, 1, 16, 16, 12)
    for m, seed in ((m0, 0), (m1, 1)): m.perceptual.start_epoch(2, [seed, 2, 0])
    assert any(not torch.equal(a, b) for a, b in zip(m0.perceptual.draw(hr.shape[2:]), m1.perceptual.draw(hr.shape[2:])))
    weights = {}
    for name, seed in (('a', 0), ('b', 0), ('c', 1)):
        T.launch(tiny(tmp_path, name, small_data, epochs=2, seed=seed, patch_mode='random'))
        weights[name] = torch.load(tmp_path/name/'generator.pt', weights_only=True)['state_dict']
    assert all(torch.equal(weights['a'][k], weights['b'][k]) for k in weights['a']), 'one seed repeats bit for bit'
    assert not any(torch.equal(weights['a'][k], weights['c'][k]) for k in weights['a'] if weights['a'][k].numel() > 1)


def test_papermill_trains_and_shows_thick_slices(tmp_path, small_thick_data):
    "A thick-slice run end to end through the notebook: trained, evaluated against its own interpolations, drawn."
    run = tmp_path/'run'
    pm.execute_notebook(ROOT/'nbs/train.ipynb', tmp_path/'out.ipynb', cwd=ROOT/'nbs', progress_bar=False,
                        parameters=dict(scale='1,1,4', patch='12,12,4', nf=8, gc=4, n_rrdb=1, epochs=1, run_dir=str(run),
                                        data=small_thick_data))
    g = load_generator(run/'generator.pt')
    assert g.config['scale'] == [1, 1, 4] and g.geometry == dict(scale=[1, 1, 4], lr_voxel=[2.0, 2.0, 8.0])
    assert (run/'figures'/'figure_41.png').exists() and (run/'consistency.csv').exists()
    m = json.loads((run/'metrics.json').read_text())['methods']
    # interpolated along z only, it comes far closer to HR than x4 on every axis (B-spline on the isotropic demo: 24.9 dB;
    # here 28.5 dB, from seeded data and scipy's deterministic zoom)
    assert m['bspline']['psnr']['mean'] > 27
