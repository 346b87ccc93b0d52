"""Failure cases reported from the field (issues 16 and 22), each on small synthetic volumes, with its right answer: the
console scripts' entry points run in this process, on files written to a temporary folder."""
import json, subprocess, sys
from pathlib import Path
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch, yaml
from scipy import ndimage
from sr3d.data import grid_difference, lr_affine, pool, save_volume
from sr3d.evaluate import eval_cli
from sr3d.infer import infer_cli
from sr3d.metrics import same_scale, volume_metrics
from sr3d.model import Generator, intensity_record, save_generator
from sr3d.prepare import prepare_cli

LAS = np.array([[-1.0, 0, 0, 47.5], [0, 1, 0, -47.5], [0, 0, 1, -31.5], [0, 0, 0, 1]])  # 1 mm, x right to left


def flip_x(n: int) -> np.ndarray:
    "Voxel index i <-> n - 1 - i along x: `A @ flip_x(n)` is the affine of `vol[::-1]` when `A` is `vol`'s."
    return np.array([[-1.0, 0, 0, n - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])


def smooth(shape, seed: int) -> np.ndarray:
    "A smooth positive volume in scanner-like units (maximum 1000)."
    v = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), 2)
    return (1000 * (v - v.min()) / (v.max() - v.min())).astype(np.float32)


def noisy(v: np.ndarray, seed: int, sigma: float = 5.4) -> np.ndarray:
    "`v` plus Gaussian noise: an SR that is good, not perfect."
    return v + np.random.default_rng(seed).normal(0, sigma, v.shape).astype(np.float32)


def cli(main, *args) -> tuple[int, str]:
    "Run a console script's entry point: (exit status, its error message, '' when none)."
    try: main([str(a) for a in args])
    except SystemExit as e: return (0, '') if e.code in (None, 0) else (1, str(e.code))
    return 0, ''


def folders(root: Path, *names) -> list[Path]:
    "Empty folders `root/name`."
    for n in names: (root/n).mkdir()
    return [root/n for n in names]


@pytest.fixture(scope='module')
def generator_file(tmp_path_factory) -> Path:
    "A small untrained generator, saved with an intensity record as sr3d_infer needs."
    f = tmp_path_factory.mktemp('g')/'g.pt'
    torch.manual_seed(0)
    save_generator(Generator(nf=8, gc=4, n_rrdb=1, interp_residual=True), f, intensity_record(1.05))
    return f


# Orientation: an SR stored RAS against its HR stored LAS is scored where its voxels are

def test_eval_brings_flipped_and_permuted_sr_onto_the_hr_grid(tmp_path):
    sr_dir, hr_dir = folders(tmp_path, 'sr', 'hr')
    hr = smooth((96, 96, 64), 0)
    sr = noisy(hr, 1)
    save_volume(hr, LAS, hr_dir/'case1_hr.nii.gz')
    save_volume(sr[::-1], LAS @ flip_x(96), sr_dir/'case1_sr.nii.gz')  # RAS: x flipped in the array and the affine
    hr2 = smooth((40, 32, 24), 2)
    sr2 = noisy(hr2, 3)
    perm = np.eye(4)[[1, 0, 2, 3]]  # x and y swapped in the array and in the affine
    save_volume(hr2, LAS, hr_dir/'case2_hr.nii.gz')
    save_volume(sr2.transpose(1, 0, 2), LAS @ perm, sr_dir/'case2_sr.nii.gz')
    assert [''.join(nib.aff2axcodes(nib.load(f).affine)) for f in sorted(sr_dir.iterdir())] == ['RAS', 'ALS']

    assert cli(eval_cli, sr_dir, hr_dir, '--out', tmp_path/'m.csv', '--lpips-weights', 'none') == (0, '')
    df = pd.read_csv(tmp_path/'m.csv').set_index('case_id')
    for k, s, h in (('case1', sr, hr), ('case2', sr2, hr2)):
        world = volume_metrics(same_scale(s, h), h)  # voxel for voxel at the same place in the world
        for m in ('mse', 'psnr', 'ssim', 'hfen'): assert df.loc[k, m] == pytest.approx(world[m], rel=1e-12, abs=1e-12)
    as_stored = volume_metrics(same_scale(sr[::-1], hr), hr)['psnr']  # what comparing the arrays as stored said
    assert df.loc['case1', 'psnr'] > 40 and as_stored < df.loc['case1', 'psnr'] - 10, (df.psnr, as_stored)


def test_eval_refuses_an_sr_on_another_grid_naming_both_files(tmp_path):
    sr_dir, hr_dir = folders(tmp_path, 'sr', 'hr')
    hr = smooth((40, 32, 24), 0)
    save_volume(hr, LAS, hr_dir/'a_hr.nii.gz')
    corner = LAS @ flip_x(40)
    corner[:3, 3] -= 1.5  # an origin 1.5 voxels off: no flip or permutation puts it on the HR grid
    save_volume(hr[::-1], corner, sr_dir/'a_sr.nii.gz')
    rc, msg = cli(eval_cli, sr_dir, hr_dir, '--out', tmp_path/'m.csv', '--lpips-weights', 'none')
    assert rc == 1 and f"{sr_dir/'a_sr.nii.gz'} (RAS) is not on the grid of {hr_dir/'a_hr.nii.gz'} (LAS)" in msg, msg
    assert 'origins (-1.5, -1.5, -1.5) mm apart' in msg, msg
    assert not (tmp_path/'m.csv').exists() and not (tmp_path/'m.json').exists()


def test_prepare_brings_lr_into_the_hr_axis_order(tmp_path):
    hr_dir, lr_dir = folders(tmp_path, 'hr', 'lr')
    hr = smooth((16, 12, 8), 0)
    save_volume(hr, LAS, hr_dir/'a.nii.gz')
    save_volume(pool(hr)[::-1], lr_affine(LAS) @ flip_x(4), lr_dir/'a.nii.gz')  # LR stored RAS
    assert cli(prepare_cli, 'folder', hr_dir, '--out', tmp_path/'set', '--lr', lr_dir, '--test-fraction', '0') == (0, '')
    lr_n, hr_n = (np.load(tmp_path/'set'/'cache'/f'a_{k}.npy') for k in ('lr', 'hr'))
    np.testing.assert_allclose(lr_n, pool(hr_n), rtol=0, atol=1e-6)  # the pooled HR, voxel for voxel
    rotated = lr_affine(LAS).copy()
    rotated[:2, :2] = rotated[:2, :2] @ [[0.8, -0.6], [0.6, 0.8]]  # 37° about z: not a flip or permutation
    save_volume(pool(hr), rotated, lr_dir/'a.nii.gz')
    rc, msg = cli(prepare_cli, 'folder', hr_dir, '--out', tmp_path/'set2', '--lr', lr_dir)
    assert rc == 1 and f"{lr_dir/'a.nii.gz'}" in msg and f"axis order of {hr_dir/'a.nii.gz'} (LAS)" in msg, msg
    assert not (tmp_path/'set2').exists()


def test_every_written_nifti_has_one_geometry(tmp_path, generator_file):
    "sform and qform agree in a prepared volume and an sr3d_infer output; a shear, which no qform holds, leaves it unset."
    hr_dir, = folders(tmp_path, 'hr')
    oblique = np.array([[0, -1.5, 0, 40], [1.2, 0, 0, -20], [0, 0, 3.0, 7], [0, 0, 0, 1]])
    save_volume(smooth((16, 16, 12), 0), oblique, hr_dir/'a.nii.gz')
    assert cli(prepare_cli, 'folder', hr_dir, '--out', tmp_path/'set', '--test-fraction', '0') == (0, '')
    lr_file = tmp_path/'set'/'train'/'a_lr.nii.gz'
    # (its voxels are not the isotropic ones the generator was made for: that refusal is tested in test_infer.py)
    assert cli(infer_cli, generator_file, lr_file, tmp_path/'sr.nii.gz', '--allow-voxel-mismatch') == (0, '')
    for f in (tmp_path/'set'/'train'/'a_hr.nii.gz', lr_file, tmp_path/'sr.nii.gz'):
        img = nib.load(f)
        assert (int(img.header['sform_code']), int(img.header['qform_code'])) == (1, 1), f
        assert grid_difference(img.get_qform(), img.get_sform()) == '', f
    np.testing.assert_allclose(nib.load(tmp_path/'sr.nii.gz').affine, oblique, atol=1e-4)  # SR on the HR grid
    sheared = np.array([[1, 0.3, 0, 5], [0, 1, 0, 2], [0, 0, 2, 1], [0, 0, 0, 1.0]])
    save_volume(np.ones((4, 4, 4), np.float32), sheared, tmp_path/'sheared.nii.gz')
    img = nib.load(tmp_path/'sheared.nii.gz')
    assert int(img.header['qform_code']) == 0 and grid_difference(img.affine, sheared) == ''


# One bad case in a folder: every input is checked before anything is written, the file at fault named

def test_infer_checks_every_input_before_writing(tmp_path, generator_file):
    lr_dir, = folders(tmp_path, 'lr')
    for i in range(3): save_volume(smooth((8, 8, 6), i) * (i != 1), lr_affine(LAS), lr_dir/f'case{i}_lr.nii.gz')
    rc, msg = cli(infer_cli, generator_file, lr_dir, tmp_path/'sr')
    assert rc == 1 and '1 of 3 input(s) refused' in msg and f"{lr_dir/'case1_lr.nii.gz'}: maximum is 0.0" in msg, msg
    assert 'case0' not in msg and 'case2' not in msg
    assert not (tmp_path/'sr').exists()  # not even the first case's output
    save_volume(smooth((8, 8, 6), 1), lr_affine(LAS), lr_dir/'case1_lr.nii.gz')
    assert cli(infer_cli, generator_file, lr_dir, tmp_path/'sr') == (0, '')
    assert sorted(p.name for p in (tmp_path/'sr').iterdir()) == [f'case{i}_lr.nii.gz' for i in range(3)]


def test_eval_names_the_hr_file_at_fault_and_every_bad_case(tmp_path):
    sr_dir, hr_dir = folders(tmp_path, 'sr', 'hr')
    for i in range(3):
        hr = smooth((16, 16, 12), i)
        save_volume(hr * (i != 1), LAS, hr_dir/f'case{i}_hr.nii.gz')  # case1's HR is all zeros
        save_volume(noisy(hr, 10 + i)[:, :, :(10 if i == 2 else 12)], LAS, sr_dir/f'case{i}_sr.nii.gz')  # case2: wrong shape
    rc, msg = cli(eval_cli, sr_dir, hr_dir, '--out', tmp_path/'m.csv', '--lpips-weights', 'none')
    assert rc == 1 and '2 of 3 case(s) refused' in msg, msg
    assert f"{hr_dir/'case1_hr.nii.gz'}: HR maximum is 0.0" in msg and f"{sr_dir/'case1_sr.nii.gz'}:" not in msg, msg
    assert f"{sr_dir/'case2_sr.nii.gz'} (LAS) is not on the grid of {hr_dir/'case2_hr.nii.gz'}" in msg, msg
    assert 'shapes (16, 16, 10) vs (16, 16, 12)' in msg and not (tmp_path/'m.csv').exists()


# A metric that one case does not define: blank with the reason, every other value and case kept

def test_eval_keeps_the_cases_around_an_undefined_metric(tmp_path, capsys):
    sr_dir, hr_dir = folders(tmp_path, 'sr', 'hr')
    for i, (k, shape) in enumerate((('a', (32, 32, 24)), ('b', (32, 32, 24)), ('slab', (96, 96, 4)))):
        hr = smooth(shape, i)
        save_volume(hr, LAS, hr_dir/f'{k}_hr.nii.gz')
        save_volume(noisy(hr, 10 + i), LAS, sr_dir/f'{k}_sr.nii.gz')
    capsys.readouterr()
    assert cli(eval_cli, sr_dir, hr_dir, '--out', tmp_path/'m.csv', '--lpips-weights', 'none') == (0, '')
    out, err = capsys.readouterr()
    why = "SSIM needs >= 7 voxels per side (scikit-image's window), the volume is 96x96x4"
    assert f'case slab: not computed: {why}' in err, err
    df = pd.read_csv(tmp_path/'m.csv').set_index('case_id')
    assert df.ssim.isna().tolist() == [False, False, True] and df.psnr.notna().all() and df.hfen.notna().all()
    assert df.loc['slab', 'not_computed'] == why and df.not_computed.isna().tolist() == [True, True, False]
    res = json.loads((tmp_path/'m.json').read_text())
    s = res['methods']['sr']
    assert (res['n_cases'], s['psnr']['n'], s['ssim']['n']) == (3, 3, 2) and res['not_computed'] == {'slab': why}
    assert s['ssim']['mean'] == pytest.approx(df.ssim.dropna().mean()) and s['psnr']['mean'] == pytest.approx(df.psnr.mean())
    assert '(n=2)' in out and out.count('(n=') == 1, out  # the table says which mean is over fewer cases


# Duplicate case ids: every folder reader refuses them, naming the files, instead of keeping one

def test_every_folder_reader_refuses_duplicate_case_ids(tmp_path, generator_file):
    dup, = folders(tmp_path, 'dup')
    for n in ('sub1.nii', 'sub1.nii.gz', 'sub2.nii.gz', 'sub3.nii.gz', 'sub3_hr.nii.gz'):
        save_volume(smooth((8, 8, 8), 0), LAS, dup/n)
    named = "2 case id(s) name more than one file ('sub1': sub1.nii and sub1.nii.gz; 'sub3': sub3.nii.gz and sub3_hr.nii.gz)"
    for main, args in ((prepare_cli, ['folder', dup, '--out', tmp_path/'set']),
                       (prepare_cli, ['folder', dup, '--out', tmp_path/'set', '--lr', dup]),
                       (infer_cli, [generator_file, dup, tmp_path/'sr']),
                       (eval_cli, [dup, dup, '--out', tmp_path/'m.csv'])):
        rc, msg = cli(main, *args)
        assert rc == 1 and f'{dup}: {named}' in msg, (args, msg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['dup']  # nothing written


# An override that collides with a lever: `--set vgg_n=0` on a grid whose baseline names vgg_n ended in a raw
# TypeError; it is refused in one line that names the lever, before the study folder is made.
def test_set_on_a_lever_of_the_grid_is_refused_in_one_line(tmp_path):
    grid = tmp_path/'G.yaml'
    grid.write_text(yaml.safe_dump(dict(preset='demo', baseline=dict(vgg_n=3), tables={'t': {'n_rrdb': [1, 2]}})))
    p = subprocess.run([sys.executable, '-c', 'from sr3d.cli import study_cli; study_cli()', '--set', 'epochs=1', 'vgg_n=0',
                        '--grid', str(grid), '--out', str(tmp_path/'S')], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and 'Traceback' not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "--set: vgg_n is set by the grid's baseline, tables or seeds" in p.stderr
    assert not (tmp_path/'S').exists()


# CT in Hounsfield units: air at -1000 meets max(HR) normalisation and clip(SR, 0, 1); refused by file everywhere.
def test_ct_in_hounsfield_units_is_refused_by_file(tmp_path, generator_file):
    ct = np.full((32, 32, 32), -1000.0, np.float32)
    ct[8:24, 8:24, 8:24] = 40.0
    hr_dir, lr_dir, sr_dir = folders(tmp_path, 'hr', 'lr', 'sr')
    save_volume(ct, np.eye(4), hr_dir/'ct_1.nii.gz')
    save_volume(pool(ct), lr_affine(np.eye(4)), lr_dir/'ct_1.nii.gz')
    save_volume(ct + 1, np.eye(4), sr_dir/'ct_1.nii.gz')  # an SR in the HR's units
    for main, args, named in [(prepare_cli, ['folder', hr_dir, '--out', tmp_path/'prep'], 'ct_1.nii.gz: 28672 voxels below 0'),
                              (infer_cli, [generator_file, lr_dir/'ct_1.nii.gz', tmp_path/'out.nii.gz'], 'ct_1.nii.gz: 448 voxels below 0'),
                              (eval_cli, [sr_dir, hr_dir, '--out', tmp_path/'ev'], 'ct_1 (HR): 28672 voxels below 0')]:
        code, msg = cli(main, *args)
        assert code == 1 and named in msg and 'Hounsfield' in msg, msg
    assert not (tmp_path/'prep').exists() and not (tmp_path/'out.nii.gz').exists() and not (tmp_path/'ev').exists()


# A study finished on another machine: one run retrained elsewhere, in another precision, must not enter a cost verdict.
def test_costs_from_another_machine_are_never_compared(tmp_path):
    from sr3d.records import fake_study, read_study
    from sr3d.claims import CLAIMS, judge
    from sr3d.report import study_header, study_table
    s = read_study(fake_study(tmp_path/'s'))
    for name in ('vgg_n=0', 'vgg_n=0-seed=1'): del s.runs[name]  # vgg_n=0's only run left was trained on another CPU
    cost = judge(s, next(c for c in CLAIMS if c.text.startswith('no perceptual loss is the cheapest')))[0]
    assert cost.outcome == 'cannot check' and 'vgg_n=0-seed=2 on another CPU, 2 threads, float32' in cost.note
    assert 'retrain one of them' in cost.note
    quality = judge(s, next(c for c in CLAIMS if c.text == 'the perceptual loss improves LPIPS'))[0]
    assert quality.outcome == 'holds' and quality.seeds_b == 1  # its quality may still be judged, against the seed spread
    head = study_header(s)
    assert 'machine A: a CPU, 2 threads, float32' in head and 'machine B: another CPU, 2 threads, float32' in head
    t = study_table(s, 'Table 4.2 — VGG slices per plane').set_index('run')
    assert t.loc['vgg_n=0', 'on'] == 'B' and t.loc['baseline', 'on'] == 'A'
