"""sr3d_bench: the plain loop and the batched perceptual loss agree, the quick command's output has its required form,
and the GPU check runs end to end (dry, on the CPU) and writes what the committed GPU results hold."""
import json, re, subprocess, sys
from pathlib import Path
import pandas as pd
import pytest, torch
from sr3d.bench.perceptual import IMAGE_LAYOUTS, plain_agreement
from sr3d.bench.gpu import CHECK_RUNS, GPU_VARIANTS
from sr3d.bench.run import bench_cli, check_gpu

ROOT = Path(__file__).resolve().parents[1]
HEADLINE = re.compile(r'^perceptual loss / VGG floor: \d+\.\d\dx \(n=10, (\d+|native)\); speedup vs plain: \d+\.\dx$')

@pytest.mark.parametrize('n,resize,shape,batch', [(3, None, (16, 12, 8), 2), (3, 40, (16, 12, 8), 2),
                                                  ('full', None, (16, 12, 8), 2), (1, 224, (16, 12, 8), 1)])
def test_plain_loop_matches_batched_loss(n, resize, shape, batch):
    d = plain_agreement(n, resize, shape, batch)
    assert d['value'] < 1e-5, d  # the bar: the same loss value in float32
    assert d['grad'] < 1e-2, d  # max-pooling near-ties may route a few gradient entries differently

def test_quick_command_prints_headline_last_and_writes_results(tmp_path):
    "The installed command, reduced (small resize, one round, one thread) to keep the test short."
    cmd = [str(Path(sys.executable).with_name('sr3d_bench')), '--quick', '--resize', '32', '--reps', '1', '--threads', '1', '--out', str(tmp_path)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.strip().splitlines()
    assert HEADLINE.match(lines[-1]), lines[-1]
    assert '(n=10, 32)' in lines[-1]
    res = json.loads((tmp_path/'bench.json').read_text())
    assert res['machine']['torch'] == torch.__version__ and res['machine']['device'] and res['machine']['torch_threads'] == 1
    assert res['config']['preset'] == 'demo' and res['precision'] in ('bf16', 'no') and 'random' in res['weights']
    assert res['headline'] == lines[-1]
    assert res['plain_agreement']['value'] < 1e-5
    (row,) = res['perceptual']
    assert row['floor_s'] == min(row['floor_nchw_s'], row['floor_channels_last_s']) and row['loss_s'] > 0
    assert [s['value'] for s in res['steps']] == [0, 3] and all(abs(s['parts_sum_over_step'] - 1) < 0.5 for s in res['steps'])
    assert all(r['loader_over_step'] > 1 for r in res['loading'])
    md = (tmp_path/'bench.md').read_text()
    assert lines[-1] in md and 'Training step' in md and res['machine']['device'] in md

def test_gpu_check_dry_run_writes_the_gpu_results(tmp_path):
    "Every step of `sr3d_bench --gpu-check`, tiny, on the CPU: two runs trained and evaluated, layouts, GPU sections."
    res = check_gpu(tmp_path, dry_run=True)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ['bench.json', 'bench.md', 'paper_runs', 'perceptual_layout.json']
    for name, epochs, vgg_n in (('paper', 2, 10), ('full', 1, 'full')):
        run = tmp_path/'paper_runs'/name
        assert sorted(p.name for p in run.iterdir()) == ['config.json', 'log.csv', 'metrics.json']
        config = json.loads((run/'config.json').read_text())['config']
        assert [config[k] for k in ('preset', 'vgg_n', 'epochs', 'weights')] == ['paper', vgg_n, epochs, 'random']
        assert list(pd.read_csv(run/'log.csv').epoch) == list(range(1, epochs + 1))
        metrics = json.loads((run/'metrics.json').read_text())
        assert metrics['n_cases'] == 1 and metrics['methods']['sr3d']['psnr']['mean'] > 0
    assert config['vgg_chunk'] == CHECK_RUNS['full']['vgg_chunk']
    rows = json.loads((tmp_path/'perceptual_layout.json').read_text())['rows']
    assert [r['loss'] for r in rows] == list(IMAGE_LAYOUTS) * 4 and all(r['loss_over_floor'] > 0 for r in rows)
    saved = json.loads((tmp_path/'bench.json').read_text())
    assert saved['mode'] == 'gpu' and saved['headline'] == res['headline']
    assert [r['variant'] for r in saved['gpu']] == [k for k, v in GPU_VARIANTS.items() if not v.get('compile')]
    assert saved['top_kernels'] and [r['epoch'] for r in saved['epochs']] == [1, 2]
    assert res['headline'] in (tmp_path/'bench.md').read_text()

@pytest.mark.parametrize('argv,message', [(['--quick', '--gpu-check'], 'at most one'),
                                          (['--dry-run'], '--dry-run goes with --gpu-check'),
                                          (['--gpu-check', '--dry-run', '--preset', 'demo'], 'sets its own preset')])
def test_gpu_check_flags_refused(argv, message):
    with pytest.raises(SystemExit, match=message): bench_cli(argv)
