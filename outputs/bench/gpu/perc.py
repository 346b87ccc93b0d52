"""GPU: the perceptual loss against its floor with its images channels-last (sr3d now) and NCHW (before), same rounds."""
import json, os, sys, torch
from pathlib import Path
DEV = os.environ.get('DEV', 'cuda'); SHAPE = (120, 120, 80) if DEV == 'cuda' else (32, 32, 24)
from sr3d.bench import perceptual_costs, machine
from sr3d.losses import Perceptual25D
class NCHWImages(Perceptual25D):
    def images(self, v, dim, idx): return super().images(v, dim, idx).contiguous()
rows = []
for n, r in ((10, 224), ('full', 224), (10, None), ('full', None))[:int(os.environ.get('CASES', 4))]:
    for name, cls in (('NCHW images (before)', NCHWImages), ('channels-last images (sr3d)', Perceptual25D)):
        d = perceptual_costs(n, r, SHAPE, 1, DEV, 'bf16', reps=5 if DEV == 'cuda' else 1, warmup=2 if DEV == 'cuda' else 0, loss_class=cls, plain_reps=0)
        d = {k: v for k, v in d.items() if k != 'times'}; d['loss'] = name; rows.append(d)
        print(name, n, r, f"loss {d['loss_s']:.4f} s, floor {d['floor_s']:.4f} s, loss/floor {d['loss_over_floor']:.2f}", flush=True)
out = Path(os.environ['OUT']); (out/'perceptual_layout.json').write_text(json.dumps(dict(machine=machine(torch.device(DEV)), torch=torch.__version__, rows=rows), indent=1))
