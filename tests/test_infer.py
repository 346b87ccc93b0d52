"The installed command lines `sr3d_infer` and `sr3d_eval`, end to end in fresh processes, on tiny volumes."
import json, shutil, subprocess, sys
from pathlib import Path
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from sr3d.data import lr_affine, pool, save_volume
from sr3d.infer import sr_affine
from sr3d.model import Generator, save_generator


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
    save_generator(Generator(nf=8, gc=4, n_rrdb=1, interp_residual=True), d/'g.pt')
    rng = np.random.default_rng(0)
    A = np.array([[0, -1.5, 0, 40], [1.2, 0, 0, -20], [0, 0, 3.0, 7], [0, 0, 0, 1]])  # anisotropic, axes swapped
    (d/'lr').mkdir(); (d/'hr').mkdir()
    for i in range(2):
        hr = rng.uniform(10, 500, (32, 32, 32)).astype(np.float32)
        save_volume(hr, A, d/'hr'/f'case{i}_hr.nii.gz')
        save_volume(pool(hr), lr_affine(A), d/'lr'/f'case{i}_lr.nii.gz')
    return d


def test_infer_file_geometry_and_values(files):
    r = run('sr3d_infer', files/'g.pt', files/'lr'/'case0_lr.nii.gz', files/'one.nii.gz', '--rescale')
    assert r.returncode == 0, r.stderr
    img, src = nib.load(files/'one.nii.gz'), nib.load(files/'lr'/'case0_lr.nii.gz')
    assert img.shape == (32, 32, 32)
    np.testing.assert_allclose(img.affine, sr_affine(src.affine), atol=1e-5)
    np.testing.assert_allclose(img.affine, nib.load(files/'hr'/'case0_hr.nii.gz').affine, atol=1e-4)  # SR lands on the HR grid
    assert np.asarray(img.dataobj).max() > 50  # --rescale: the input's intensity units


def test_infer_folder_and_eval(files):
    r = run('sr3d_infer', files/'g.pt', files/'lr', files/'sr', '--tile', '6', '--overlap', '2')
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (files/'sr').iterdir()) == ['case0_lr.nii.gz', 'case1_lr.nii.gz']
    r = run('sr3d_eval', files/'sr', files/'hr', '--out', files/'m.csv')
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(files/'m.csv')
    assert list(df.case_id) == ['case0', 'case1'] and list(df.columns) == ['case_id', 'method', 'mse', 'psnr', 'ssim', 'lpips', 'hfen']
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
