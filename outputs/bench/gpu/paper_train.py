"""GPU check of the paper preset through the real code path: sr3d.train.launch (Accelerate, bf16) then evaluate_generator.
Data: 5 MSD-sized smooth random volumes (240x240x156), 4 train / 1 test. VGG weights random (ImageNet is not reachable there)."""
# (2026-11-30: its scratch folders, first in the GPU machine's temporary folder, are now under outputs/scratch/, git-ignored.)
import json, os, shutil, sys, time
from pathlib import Path
import numpy as np, pandas as pd, torch
from scipy import ndimage
from sr3d.data import prepare_folder, save_volume
from sr3d.train import make_config, launch
from sr3d.model import load_generator
from sr3d.evaluate import evaluate_generator, format_table

out = Path(sys.argv[1]); extra = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}; tag = sys.argv[3] if len(sys.argv) > 3 else 'paper'; dry = os.environ.get('DRY') == '1'
shape = (128, 128, 96) if dry else (240, 240, 156)
root = Path('outputs/scratch/msdlike'); made = (root/'prep'/'list.csv').exists(); (root/'hr').mkdir(parents=True, exist_ok=True)
t0 = time.time()
for i in range(0 if made else 5):
    rng = np.random.default_rng(i)
    v = ndimage.zoom(rng.random([-(-s // 8) for s in shape]), 8, order=1)[:shape[0], :shape[1], :shape[2]] + 0.05 * rng.random(shape)
    save_volume(v.astype(np.float32), np.eye(4), root/'hr'/f'c{i}.nii')
lf = root/'prep'/'list.csv' if made else prepare_folder(root/'hr', root/'prep', test_fraction=0.2)
print(f'data ready in {time.time() - t0:.1f} s', flush=True)
kw = dict(data=str(lf), weights='random', epochs=2, patches_per_volume=8, run_dir=f'outputs/scratch/{tag}_run', ckpt_every=1, num_workers=4); kw.update(extra)
if dry: kw.update(nf=8, gc=4, n_rrdb=1, batch_size=2, patches_per_volume=1, vgg_resize='native', mixed_precision='no', num_workers=0, **{k: v for k, v in extra.items() if k == 'vgg_chunk'})
c = make_config('paper', **kw)
t0 = time.time(); run = launch(c); print(f'trained in {time.time() - t0:.1f} s', flush=True)
print(pd.read_csv(run/'log.csv').round(4).to_string())
t0 = time.time(); m = evaluate_generator(load_generator(run/'generator.pt'), lf, run, progress=False)
print(f'evaluated in {time.time() - t0:.1f} s on {m["device"]}; LPIPS: {m["lpips"]["reason"]}')
print(format_table(m['methods']).to_string())
(out/'runs'/tag).mkdir(parents=True, exist_ok=True)
for f in ('config.json', 'log.csv', 'metrics.json'): shutil.copy(run/f, out/'runs'/tag/f)
