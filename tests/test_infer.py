"The installed command lines `sr3d_infer` and `sr3d_eval`, end to end in fresh processes: the README's workflow gives the in-package numbers."
import json, shutil, subprocess, sys
from pathlib import Path
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from sr3d.data import load_volume, lr_affine, pool, save_volume
from sr3d.prepare import read_list
from sr3d.evaluate import evaluate_generator
from sr3d.infer import sr_affine
from sr3d.model import Generator, geometry_record, intensity_record, load_generator, save_generator

ROOT = Path(__file__).resolve().parents[1]
README_GENERATOR = ROOT/'outputs/demo/runs/baseline/generator.pt'  # the generator the README's sr3d_infer line names


def command(name: str) -> list[str]:
    "The console script `name`, or the same entry point through the interpreter when it is not on the PATH."
    exe = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if exe: return [exe]
    module, func = {'sr3d_infer': ('sr3d.infer', 'infer_cli'), 'sr3d_eval': ('sr3d.evaluate', 'eval_cli')}[name]
    return [sys.executable, '-c', f'from {module} import {func}; {func}()']


def run(name, *args):
    return subprocess.run(command(name) + [str(a) for a in args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp('cli')
    torch.manual_seed(0)
    A = np.array([[0, -1.5, 0, 40], [1.2, 0, 0, -20], [0, 0, 3.0, 7], [0, 0, 0, 1]])  # anisotropic, axes swapped
    trained_on = geometry_record(4, np.sqrt((lr_affine(A)[:3, :3] ** 2).sum(0)))  # as if trained on these voxels
    save_generator(Generator(nf=8, gc=4, n_rrdb=1, interp_residual=True), d/'g.pt', intensity_record(1.05), trained_on)
    rng = np.random.default_rng(0)
    (d/'lr').mkdir(); (d/'hr').mkdir()
    for i in range(2):
        hr = rng.uniform(10, 500, (32, 32, 32)).astype(np.float32)
        save_volume(hr, A, d/'hr'/f'case{i}_hr.nii.gz')
        save_volume(pool(hr), lr_affine(A), d/'lr'/f'case{i}_lr.nii.gz')
    return d


def test_infer_file_geometry_and_values(files):
    r = run('sr3d_infer', files/'g.pt', files/'lr'/'case0_lr.nii.gz', files/'one.nii.gz')
    assert r.returncode == 0, r.stderr
    img, src = nib.load(files/'one.nii.gz'), nib.load(files/'lr'/'case0_lr.nii.gz')
    assert img.shape == (32, 32, 32)
    np.testing.assert_allclose(img.affine, sr_affine(src.affine), atol=1e-5)
    np.testing.assert_allclose(img.affine, nib.load(files/'hr'/'case0_hr.nii.gz').affine, atol=1e-4)  # SR lands on the HR grid
    lr_max = np.asarray(src.dataobj).max()
    assert 0.8 * lr_max < np.asarray(img.dataobj).max() < 1.5 * lr_max  # the input's intensity units
    r = run('sr3d_infer', files/'g.pt', files/'lr'/'case0_lr.nii.gz', files/'norm.nii.gz', '--normalised')
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.asarray(nib.load(files/'norm.nii.gz').dataobj) * 1.05 * lr_max, np.asarray(img.dataobj), rtol=1e-3, atol=1e-3)


def test_infer_folder_and_eval(files):
    r = run('sr3d_infer', files/'g.pt', files/'lr', files/'sr', '--tile', '6', '--overlap', '2')
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (files/'sr').iterdir()) == ['case0_lr.nii.gz', 'case1_lr.nii.gz']
    r = run('sr3d_eval', files/'sr', files/'hr', '--out', files/'m.csv')
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(files/'m.csv')
    assert list(df.case_id) == ['case0', 'case1'] and list(df.columns) == ['case_id', 'method', 'mse', 'psnr', 'ssim', 'lpips', 'hfen', 'not_computed']
    summary = json.loads((files/'m.json').read_text())
    assert summary['n_cases'] == 2 and summary['methods']['sr']['psnr']['mean'] == pytest.approx(df.psnr.mean())


def test_errors(files):
    save_volume(np.ones((8, 8), np.float32), np.eye(4), files/'flat.nii.gz')
    r = run('sr3d_infer', files/'g.pt', files/'flat.nii.gz', files/'o.nii.gz')
    assert r.returncode != 0 and 'expected a 3D volume, got 2D' in r.stderr
    r = run('sr3d_infer', files/'nowhere.pt', files/'lr'/'case0_lr.nii.gz', files/'o.nii.gz')
    assert r.returncode != 0 and 'checkpoint not found' in r.stderr
    (files/'hr2').mkdir()
    shutil.copy(files/'hr'/'case0_hr.nii.gz', files/'hr2')
    r = run('sr3d_eval', files/'lr', files/'hr2', '--out', files/'x.csv')
    assert r.returncode != 0 and "SR case(s) without HR ['case1']" in r.stderr
    assert not (files/'x.csv').exists()


def test_readme_workflow_gives_the_in_package_numbers(tmp_path, small_data):
    "sr3d_infer then sr3d_eval on demo test volumes in MRI-like units: per case within 0.05 dB of evaluate_generator."
    cases = read_list(small_data, 'test')
    (tmp_path/'lr').mkdir(); (tmp_path/'hr').mkdir()
    for c in cases:  # scanner-like units: max(HR) = 800
        lr, a_lr = load_volume(c.lr_path); hr, a_hr = load_volume(c.hr_path); k = 800 / hr.max()
        save_volume(k * lr, a_lr, tmp_path/'lr'/c.lr_path.name); save_volume(k * hr, a_hr, tmp_path/'hr'/c.hr_path.name)
    assert run('sr3d_infer', README_GENERATOR, tmp_path/'lr', tmp_path/'sr').returncode == 0
    sr = load_volume(tmp_path/'sr'/cases[0].lr_path.name)[0]
    assert 0.8 * 800 / 1.3 < sr.max() < 1.3 * 800  # SR in the input's units, not divided by max(LR)
    r = run('sr3d_eval', tmp_path/'sr', tmp_path/'hr', '--out', tmp_path/'m.csv', '--lpips-weights', 'none')
    assert r.returncode == 0, r.stderr
    cli = pd.read_csv(tmp_path/'m.csv').set_index('case_id').psnr
    evaluate_generator(load_generator(README_GENERATOR), small_data, tmp_path/'pkg', baselines=False, lpips_weights=None, progress=False)
    pkg = pd.read_csv(tmp_path/'pkg'/'per_case.csv').set_index('case_id').psnr
    assert (cli - pkg.loc[cli.index]).abs().max() < 0.05, (cli, pkg)


def test_eval_refuses_scales_that_differ(files):
    r = run('sr3d_infer', files/'g.pt', files/'lr', files/'sr_norm', '--normalised')
    assert r.returncode == 0, r.stderr
    r = run('sr3d_eval', files/'sr_norm', files/'hr', '--out', files/'bad.csv')
    assert r.returncode != 0 and 'case0_lr.nii.gz: max(SR)' in r.stderr and 'same intensity units' in r.stderr
    assert not (files/'bad.csv').exists()


def thick_case(d: Path, voxel=(1.0, 1.0, 4.0)):
    "A smooth LR volume of `voxel` mm (a thick-slice scan), and a tiny generator trained for 1x1x4 on 2x2x8 mm voxels."
    torch.manual_seed(0)
    save_generator(Generator(nf=8, gc=4, n_rrdb=1, scale=(1, 1, 4), interp_residual=True), d/'thick.pt',
                   intensity_record(1.0), geometry_record((1, 1, 4), (2.0, 2.0, 8.0)))
    A = np.diag([*voxel, 1.0]); A[:3, 3] = [-30.0, 12.0, -8.0]
    lr = np.random.default_rng(1).uniform(50, 800, (16, 16, 8)).astype(np.float32)
    save_volume(lr, A, d/'lr.nii.gz')
    return A, lr


def test_a_thick_slice_scan_comes_back_isotropic_over_its_input(tmp_path):
    "1 x 1 x 4 mm in, 1 mm isotropic out, each LR voxel exactly covered by its four SR voxels in world space."
    A, lr = thick_case(tmp_path)
    r = run('sr3d_infer', tmp_path/'thick.pt', tmp_path/'lr.nii.gz', tmp_path/'sr.nii.gz')
    assert r.returncode == 0, r.stderr
    img = nib.load(tmp_path/'sr.nii.gz')
    assert img.shape == (16, 16, 32)
    np.testing.assert_allclose(img.header.get_zooms(), (1.0, 1.0, 1.0))
    np.testing.assert_allclose(lr_affine(img.affine, (1, 1, 4)), A, atol=1e-6)  # pooling SR's grid gives the input's
    centre = lambda aff, ijk: aff[:3, :3] @ ijk + aff[:3, 3]
    for ijk in [(0, 0, 0), (15, 3, 7)]:  # an LR voxel's centre = the mean of its four SR voxel centres
        sr_centres = [centre(img.affine, (ijk[0], ijk[1], 4 * ijk[2] + k)) for k in range(4)]
        np.testing.assert_allclose(np.mean(sr_centres, 0), centre(A, ijk), atol=1e-6)


def test_voxels_shaped_unlike_the_training_lr_are_refused(tmp_path):
    "A 1x1x4 generator given 1 mm isotropic voxels, and an isotropic one given 1x1x4 mm, are refused by name."
    thick_case(tmp_path, voxel=(1.0, 1.0, 1.0))
    r = run('sr3d_infer', tmp_path/'thick.pt', tmp_path/'lr.nii.gz', tmp_path/'sr.nii.gz')
    assert r.returncode != 0 and 'lr.nii.gz: voxels of 1x1x1 mm' in r.stderr and '2x2x8 mm' in r.stderr
    assert 'factors 1x1x4' in r.stderr and not (tmp_path/'sr.nii.gz').exists()
    r = run('sr3d_infer', tmp_path/'thick.pt', tmp_path/'lr.nii.gz', tmp_path/'sr.nii.gz', '--allow-voxel-mismatch')
    assert r.returncode == 0, r.stderr
    thick_case(tmp_path)  # 1 x 1 x 4 mm, given to the committed isotropic demo generator
    r = run('sr3d_infer', README_GENERATOR, tmp_path/'lr.nii.gz', tmp_path/'iso.nii.gz')
    assert r.returncode != 0 and 'voxels of 1x1x4 mm' in r.stderr and 'factors 4x4x4' in r.stderr


def test_the_projection_agrees_with_its_lr(tmp_path):
    "`--project`: every SR block averages exactly to its LR voxel, in the input's units."
    A, lr = thick_case(tmp_path)
    r = run('sr3d_infer', tmp_path/'thick.pt', tmp_path/'lr.nii.gz', tmp_path/'sr.nii.gz', '--project')
    assert r.returncode == 0, r.stderr
    sr = np.asarray(nib.load(tmp_path/'sr.nii.gz').dataobj, np.float64)
    np.testing.assert_allclose(pool(sr, (1, 1, 4)), lr, rtol=1e-5)
