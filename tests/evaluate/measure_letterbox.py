"""Measure how far a PIL uint8 letterbox, and the other antialias setting, are from HPSv2's official transform.

Run: PYTHONPATH=src python tests/evaluate/measure_letterbox.py  (numbers quoted in docs/evaluation.md)
"""

import sys
sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
import numpy as np, torch
from PIL import Image
import official_reference as official
from instructengine.scorers.preprocess import to_normalized_array, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

def pil_way(img, size=224):
    w, h = img.size; s = size / max(w, h)
    small = img.resize((round(w * s), round(h * s)), Image.BICUBIC)
    c = Image.new("RGB", (size, size)); c.paste(small, ((size - small.size[0]) // 2, (size - small.size[1]) // 2))
    return torch.from_numpy(to_normalized_array(c, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD))

rng = np.random.default_rng(0)
yy, xx = np.mgrid[0:512, 0:768]
smooth = np.stack([(xx / 3) % 256, (yy / 2) % 256, ((xx + yy) / 5) % 256], -1).astype(np.uint8)
for name, arr in [("noise 768x512", rng.integers(0, 256, (512, 768, 3), dtype=np.uint8)), ("gradients 768x512", smooth)]:
    img = Image.fromarray(arr)
    ref = official.hpsv2_val_transform(img, 224, antialias=True)
    noaa = official.hpsv2_val_transform(img, 224, antialias=False)
    p = pil_way(img)
    print(f"{name}: |PIL uint8 - official(aa)| max {(p - ref).abs().max():.3g} mean {(p - ref).abs().mean():.3g}; "
          f"|aa off - aa on| max {(noaa - ref).abs().max():.3g} mean {(noaa - ref).abs().mean():.3g}")
