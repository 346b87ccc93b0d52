"evaluate_generator with a reportable LPIPS model: the branch that runs only where ImageNet AlexNet weights are present."
import dataclasses, json, warnings
import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
import sr3d.metrics
from sr3d.prepare import Source, demo_affine, write_dataset
from sr3d.evaluate import evaluate_generator
from sr3d.metrics import alex_lpips, lpips_model, lpips_volume, prepare_pair
from sr3d.model import Generator


@pytest.fixture
def verified_alexnet(tmp_path, monkeypatch):
    "A random AlexNet file in a temporary torch hub cache, treated as torchvision's verified ImageNet file."
    monkeypatch.setenv('TORCH_HOME', str(tmp_path/'torch'))
    torch.manual_seed(0)
    sd = {k: v if k.startswith('features') else torch.zeros(1).expand(v.shape) for k, v in torchvision.models.alexnet().state_dict().items()}
    f = tmp_path/'torch/hub/checkpoints/alexnet-owt-7be5be79.pth'; f.parent.mkdir(parents=True); torch.save(sd, f)
    real = sr3d.metrics.find_weights
    monkeypatch.setattr(sr3d.metrics, 'find_weights', lambda arch, weights, **kw: dataclasses.replace(real(arch, weights, download=False), verified=True))
    return f


def test_lpips_model_available(verified_alexnet):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        net, status = lpips_model()
        ref, _ = alex_lpips(str(verified_alexnet))
    assert status['available'] and status['reason'] is None and status['weights']['kind'] == 'imagenet'
    rng = np.random.default_rng(0)
    s, h = prepare_pair(rng.random((32, 36, 40)), rng.random((32, 36, 40)))
    assert lpips_volume(s, h, net) == pytest.approx(lpips_volume(s, h, ref), abs=1e-12)


def test_evaluate_generator_with_lpips(verified_alexnet, tmp_path):
    rng = np.random.default_rng(1)
    vols = [rng.uniform(1, 100, (32, 32, 32)).astype(np.float32) for _ in range(2)]
    lf = write_dataset(tmp_path/'data', [Source(f'c{i}', 'test', 0, f'c{i}', (lambda v: lambda: (v, demo_affine(v.shape), None))(v))
                                         for i, v in enumerate(vols)], dict(source='lpips test'))
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        res = evaluate_generator(Generator(nf=8, gc=4, n_rrdb=1, interp_residual=True), lf, tmp_path/'run', progress=False)
    assert res['lpips']['available']
    per_case = pd.read_csv(tmp_path/'run/per_case.csv')
    assert per_case.lpips.notna().all() and (per_case.lpips > 0).all()
    assert res['methods']['sr3d']['lpips']['mean'] == pytest.approx(per_case[per_case.method == 'sr3d'].lpips.mean())
    assert {w['metric'] for w in res['wilcoxon']} == {'mse', 'psnr', 'ssim', 'lpips', 'hfen'}
    cache = json.loads((tmp_path/'data/baselines_test.json').read_text())
    assert cache['key']['lpips'] == res['lpips']['weights']['sha256']
    assert all(r['lpips'] is not None for r in cache['rows'])
