"""The numbers that a refactor must not change: encoder hashes after a fixed CPU run of each
method preset, and the mask statistics of every sampler at a fixed seed.

``python -m tests.golden --write`` records them into ``tests/golden.json`` (do that only when a
change is *meant* to change the numbers, and say why in the commit). ``test_golden.py`` compares.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import tempfile
from pathlib import Path

import torch

GOLDEN = Path(__file__).with_name("golden.json")
METHODS = ("bootleg", "ijepa", "mae", "data2vec")
SAMPLERS = ("bootleg", "ijepa", "random", "cyclic", "inverse_block")
STEPS = 30


def method_overrides(method: str) -> list[str]:
    """A fixed 30-step micro run of ``method``'s preset on the embedded CIFAR-10 subset."""
    return [
        f"method={method}",
        "model.size=micro",
        "model.img_size=32",
        "model.patch_size=4",
        "data.name=embedded",
        "optim.batch_size=16",
        "optim.epochs=100",
        "optim.warmup_epochs=10",
        f"run.steps={STEPS}",
        "run.seed=0",
        "run.device=cpu",
        "run.progress=false",
        "run.checkpoint_every=1000",
    ]


def encoder_hash(method: str) -> str:
    from bootleg.config import load_config
    from bootleg.train import pretrain

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reduction order, hence the bits, depend on the thread count
    try:
        with tempfile.TemporaryDirectory() as d:
            cfg = load_config(None, [*method_overrides(method), f"run.out={d}/run"])
            out = pretrain(cfg, cfg.run.out)
            return hashlib.sha256((Path(out) / "encoder.safetensors").read_bytes()).hexdigest()
    finally:
        torch.set_num_threads(threads)


def mask_stats_json(sampler: str) -> dict:
    from bootleg.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(
            [
                "masks",
                "stats",
                "--sampler",
                sampler,
                "--grid",
                "14",
                "14",
                "--batch-size",
                "64",
                "--batches",
                "8",
                "--seed",
                "0",
                "--json",
            ]
        )
    assert rc == 0
    return json.loads(buf.getvalue())


def compute() -> dict:
    return {
        "encoder_sha256": {m: encoder_hash(m) for m in METHODS},
        "mask_stats": {s: mask_stats_json(s) for s in SAMPLERS},
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    data = compute()
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    if a.write:
        GOLDEN.write_text(text)
    print(text)
