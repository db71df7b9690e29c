"""Running pretraining for the flows: in a torchrun subprocess whose ``metrics.jsonl`` is
followed, and progress shown in the Prefect UI."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prefect.artifacts import create_progress_artifact, update_progress_artifact

from bootleg.errors import BootlegError

Record = dict[str, Any]


# ------------------------------------------------------------------ progress in the Prefect UI


class PrefectProgress:
    """A Prefect progress artifact updated from metrics records (at most every ``every`` s)."""

    def __init__(self, total_steps: int | None, epochs: int, description: str, every: float = 3.0) -> None:
        self.total, self.epochs, self.every = total_steps, max(1, epochs), every
        self.last = 0.0
        try:
            self.id = create_progress_artifact(progress=0.0, description=description)
        except Exception:  # no Prefect context (plain call): no artifact
            self.id = None

    def set(self, pct: float, force: bool = False) -> None:
        if self.id is None:
            return
        now = time.monotonic()
        if force or now - self.last >= self.every:
            self.last = now
            try:
                update_progress_artifact(self.id, min(100.0, max(0.0, pct)))
            except Exception:
                pass

    def __call__(self, rec: Record) -> None:
        if self.total:
            pct = 100.0 * rec.get("step", 0) / self.total
        else:
            pct = 100.0 * rec.get("epoch", 0.0) / self.epochs
        self.set(pct, force=pct >= 100.0)


def follow_jsonl(
    path: Path, proc: subprocess.Popen, callbacks: Sequence[Callable[[Record], None]], poll: float = 1.0
) -> None:
    """Feed each new line of ``path`` to ``callbacks`` until ``proc`` ends."""
    offset, last_step = 0, -1
    while True:
        done = proc.poll() is not None
        if path.is_file():
            size = path.stat().st_size
            if size < offset:  # rewritten (resume trims it)
                offset = 0
            with open(path) as f:
                f.seek(offset)
                chunk = f.read()
            complete = chunk[: chunk.rfind("\n") + 1]
            offset += len(complete.encode())
            for line in complete.splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("step", 0) <= last_step:
                    continue
                last_step = rec.get("step", last_step)
                for cb in callbacks:
                    cb(rec)
        if done:
            return
        time.sleep(poll)


def torchrun_pretrain(
    params: str, overrides: list[str], out: str, nproc: int, resume: bool, callbacks: Sequence[Callable[[Record], None]]
) -> None:
    """``torchrun --standalone --nproc-per-node N -m bootleg.cli pretrain ...`` in a subprocess;
    its ``metrics.jsonl`` is followed to feed ``callbacks``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd += ["-m", "bootleg.cli", "pretrain", "--params", params, "--out", out]
    for o in overrides:
        cmd += ["--set", o]
    if resume:
        cmd.append("--resume")
    tail: collections.deque[str] = collections.deque(maxlen=30)
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, bufsize=1)

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write(line)
            tail.append(line.rstrip())

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        follow_jsonl(Path(out) / "metrics.jsonl", proc, callbacks)
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait()
        reader.join(timeout=5)
    if proc.returncode != 0:
        errors = [t for t in tail if t.startswith("error:")]
        why = errors[-1][len("error:") :].strip() if errors else (tail[-1] if tail else "no output")
        raise BootlegError(f"torchrun pretraining failed (exit {proc.returncode}): {why}")
