"""bootleg.tracking against real MLflow stores: a server process on loopback and the
embedded sqlite default."""

from __future__ import annotations

import signal
import time
import warnings
from pathlib import Path

import pytest
import torch

from bootleg import tracking
from bootleg.config import load_config
from bootleg.errors import BootlegError
from bootleg.export import load_encoder, save_encoder
from bootleg.models import ViTEncoder

ROOT = Path(__file__).resolve().parents[1]


def tiny_encoder(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    enc = ViTEncoder(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, reg_tokens=1)
    path.mkdir(parents=True, exist_ok=True)
    save_encoder(enc, path / "encoder.safetensors")
    (path / "config.yaml").write_text("method: bootleg\n")
    return path


def test_unreachable_server_is_one_line_error() -> None:
    from conftest import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BootlegError) as e:
        tracking.configure(uri)
    msg = str(e.value)
    assert "\n" not in msg and "unreachable" in msg and uri in msg


def test_embedded_default_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOOTLEG_PROJECT_DIR", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(ROOT / "params.yaml", ["run.steps=2"])
    rid = tracking.start_run(cfg, experiment="embedded-test", run_dir=tmp_path / "run")
    tracking.log_metrics(rid, {"a": 1.0, "nan": float("nan")}, step=3)
    (tmp_path / "x.txt").write_text("hi")
    assert tracking.log_artifacts(rid, [tmp_path / "x.txt", tmp_path / "missing"]) == 1
    tracking.end_run(rid)
    run = tracking.client().get_run(rid)
    assert run.data.params["model.size"] == "micro"
    assert run.data.params["targets.blocks"] == "[1, 4, 8]"
    assert run.data.metrics == {"a": 1.0}
    assert run.data.tags[tracking.TAG_DATA_HASH] == __import__("bootleg.data").data.dataset_fingerprint("embedded")
    assert run.data.tags[tracking.TAG_DATASET] == "embedded"
    assert (tmp_path / "mlflow.db").is_file()
    assert list((tmp_path / "mlartifacts").rglob("x.txt"))


@pytest.mark.slow
def test_training_survives_server_loss(start_mlflow_server, tmp_path: Path, monkeypatch, caplog) -> None:
    """Kill the MLflow server mid-pretraining: training finishes, the callback warns once and
    buffers, and delivers everything when a server is back on the same address."""
    from bootleg.train import pretrain

    server = start_mlflow_server()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    cfg = load_config(
        ROOT / "params.yaml",
        ["run.steps=8", "optim.batch_size=16", "data.limit=160", "run.log_every=1", "run.progress=false",
         "optim.warmup_epochs=1", "run.checkpoint_every=100"],
    )  # fmt: skip
    rid = tracking.start_run(cfg, experiment="server-loss")
    cb = tracking.MLflowCallback(rid, flush_every=0.2, max_backoff=1.0, request_timeout=2.0, system_every=0.5)
    delivered_before_kill = []

    def kill_at_3(rec: dict) -> None:
        if rec["step"] == 3:
            deadline = time.monotonic() + 20
            while cb.pending and time.monotonic() < deadline:
                time.sleep(0.05)
            delivered_before_kill.append(cb.sent)
            server.stop(signal.SIGKILL)
        if rec["step"] > 3:
            time.sleep(0.4)  # give the sender time to notice

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = pretrain(cfg, tmp_path / "run", callbacks=[cb, kill_at_3])
        assert (out / "encoder.safetensors").is_file()
        deadline = time.monotonic() + 20
        while not any("buffering" in str(w.message) for w in caught) and time.monotonic() < deadline:
            time.sleep(0.1)
    msgs = [str(w.message) for w in caught]
    assert sum("tracking server unreachable; buffering" in m for m in msgs) == 1, msgs
    assert delivered_before_kill and delivered_before_kill[0] > 0
    assert cb.pending > 0
    start_mlflow_server(port=server.port, root=server.root)  # same db, same address
    assert cb.close(timeout=30) == 0
    history = tracking.client().get_metric_history(rid, "loss")
    assert sorted(m.step for m in history) == list(range(1, 9))
    run = tracking.client().get_run(rid)
    assert "system/cpu_utilization_percentage" in run.data.metrics
    assert "tracking server reachable again" in caplog.text


def test_close_without_server_reports_undelivered(tmp_path: Path) -> None:
    from conftest import free_port

    cb = tracking.MLflowCallback("0" * 32, uri=f"http://127.0.0.1:{free_port()}", flush_every=0.1, system_every=0)
    cb({"step": 1, "loss": 1.0})
    with pytest.warns(RuntimeWarning, match="not delivered"):
        assert cb.close(timeout=1) == 1


def test_register_alias_and_download(mlflow_uri: str, tmp_path: Path) -> None:
    name = "enc-test"
    versions = {}
    for i, acc in enumerate([0.3, 0.7, 0.5]):
        rid = tracking.start_run(None, experiment="registry")
        tracking.log_metrics(rid, {"probe.knn_cls_top1": acc})
        versions[tracking.register_encoder(rid, tiny_encoder(tmp_path / f"r{i}", seed=i), name)] = acc
        tracking.end_run(rid)
    best = tracking.set_alias_by_metric(name, "champion", "probe.knn_cls_top1")
    assert best is not None and best[1] == 0.7
    assert versions[best[0]] == 0.7
    worst = tracking.set_alias_by_metric(name, "worst", "probe.knn_cls_top1", higher_is_better=False)
    assert worst is not None and worst[1] == 0.3
    local = tracking.download_encoder(f"models:/{name}@champion", tmp_path / "dl")
    enc = load_encoder(local)
    ref = load_encoder(tmp_path / "r1")
    for a, b in zip(enc.state_dict().values(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert (local / "config.yaml").is_file()
    with pytest.raises(BootlegError, match="cannot download"):
        tracking.download_encoder(f"models:/{name}@nope", tmp_path / "dl2")
