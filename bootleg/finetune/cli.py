"""``bootleg finetune``: end-to-end fine-tuning of a checkpoint (see :mod:`bootleg.finetune.run`).

bootleg finetune --checkpoint RUN|models:/NAME@ALIAS --out DIR [--fraction 0.01]
                 [--data NAME] [--data-root DIR] [--params params.yaml] [--set k=v ...]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from bootleg.finetune.config import load_finetune_config


def add_finetune_parser(subparsers: Any) -> Any:
    p = subparsers.add_parser("finetune", help="fine-tune a checkpoint end to end (MAE's recipe, timm's parts)")
    p.add_argument("--checkpoint", required=True, help="run folder, encoder.safetensors or MLflow model URI")
    p.add_argument("--out", required=True, help="output folder (finetune.json, classifier.safetensors)")
    p.add_argument("--fraction", type=float, help="class-balanced fraction of the train split, e.g. 0.01")
    p.add_argument("--data", help="dataset (embedded, cifar10, fashion_mnist, imagefolder); default: the run's")
    p.add_argument("--data-root", help="where the dataset is")
    p.add_argument("--params", help="YAML file with a finetune: section")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field, e.g. epochs=10")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run_finetune_cli)
    return p


def run_finetune_cli(args: Any) -> int:
    raw: dict[str, Any] = {}
    source = "finetune"
    if args.params:
        from bootleg.config import read_params

        raw, source = dict(read_params(args.params).get("finetune") or {}), str(args.params)
    sets = list(args.set or [])
    sets += [f"{k}={json.dumps(v)}" for k, v in (("fraction", args.fraction), ("data", args.data),
                                                  ("root", args.data_root)) if v is not None]  # fmt: skip
    cfg = load_finetune_config(raw, sets, source)
    from bootleg.finetune.run import RESULT_FILE, finetune

    log = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    res = finetune(args.checkpoint, args.out, cfg, seed=args.seed, device=args.device, log=log)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"finetune top1 {res['score']:.2f}  top5 {res['top5']:.2f}  ({res['train_images']} train images)")
        print(f"wrote {Path(args.out) / RESULT_FILE}")
    return 0
