"""Peak resident memory of ``protocol: paper`` against the size of a streamed ImageFolder.

    python bench/probe_memory.py --sizes 1000 4000 --img 64       # small, CPU
    python bench/probe_memory.py --sizes 5000 20000 --img 224     # the issue's check (long on CPU)

Generates a JPEG ImageFolder (10 classes, ``train/`` and ``test/``) of the largest size once,
then for each size runs all classification probes (one epoch, tiny encoder) in a fresh
process on the first ``size`` training images and prints one JSON line with each run's
peak RSS (``ru_maxrss``). Memory should not grow with the dataset.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys, torch
torch.set_num_threads(1)
from bootleg.export import save_encoder
from bootleg.models import ViTEncoder
from bootleg.probe import ProbeConfig
from bootleg.probe.runner import run_probes
root, out, size, img = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
save_encoder(ViTEncoder(img_size=img, patch_size=16, embed_dim=48, depth=1, num_heads=3), out + "/enc/encoder.safetensors")
cfg = ProbeConfig.model_validate({"protocol": "paper", "data": "imagefolder", "root": root, "limit": size,
    "test_limit": 200, "paper": {"epochs": 1, "batch_size": 64, "workers": 2, "knn_bank": 500},
    "linear": {"lrs": [1e-3, 1e-2], "wds": [0.0]}, "attentive": {"lrs": [1e-3], "wds": [0.0]}})
rep = run_probes(out + "/enc", out + "/probe", cfg, device="cpu")
print(json.dumps({"size": size, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "children_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "scores": {r.probe: r.score for r in rep.results}}))
"""


def make_folder(root: Path, n_train: int, n_test: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            c = i % 10
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            base = np.full((size, size, 3), 25 * c, dtype=np.uint8)
            noise = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            Image.fromarray(base + noise).save(d / f"{i:06d}.jpg", quality=85)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000])
    p.add_argument("--img", type=int, default=64)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bootleg-probe-mem-") as tmp:
        root = Path(tmp) / "folder"
        make_folder(root, max(a.sizes), 200, a.img)
        runs = []
        for size in a.sizes:
            out = Path(tmp) / f"run{size}"
            (out / "enc").mkdir(parents=True)
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, str(root), str(out), str(size), str(a.img)],
                capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
            )  # fmt: skip
            if proc.returncode != 0:
                print(proc.stderr[-2000:], file=sys.stderr)
                return 1
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    peaks = [r["peak_rss_mib"] for r in runs]
    print(json.dumps({"bench": "probe_memory", "img": a.img, "runs": runs, "growth": peaks[-1] / peaks[0] - 1}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
