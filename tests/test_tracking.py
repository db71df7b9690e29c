"""flows.tracking and flows.registry against real MLflow stores (a server process on loopback
and the embedded sqlite default), the @champion rule, and a library free of orchestration."""

from __future__ import annotations

import ast
import json
import signal
import time
from pathlib import Path

import pytest
import torch

from bootleg.config import load_config
from bootleg.errors import BootlegError
from bootleg.export import load_encoder, save_encoder
from bootleg.models import ViTEncoder
from bootleg.probe.results import ProbeReport, ProbeResult
from flows import registry, tracking
from flows.provenance import dataset_fingerprint

ROOT = Path(__file__).resolve().parents[1]


def tiny_encoder(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    enc = ViTEncoder(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, reg_tokens=1)
    path.mkdir(parents=True, exist_ok=True)
    save_encoder(enc, path / "encoder.safetensors")
    (path / "config.yaml").write_text("method: bootleg\n")
    return path


def test_library_imports_no_orchestration() -> None:
    """``bootleg/`` imports no prefect, optuna, dvc or flows, and MLflow only lazily in
    ``bootleg/export.py``'s ``download_model``."""
    banned = {"prefect", "optuna", "dvc", "flows"}
    mlflow_at = []
    for path in sorted((ROOT / "bootleg").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for n in names:
                top = n.split(".")[0]
                assert top not in banned, f"{path.relative_to(ROOT)} imports {n}"
                if top == "mlflow":
                    mlflow_at.append(path.relative_to(ROOT).as_posix())
    assert mlflow_at == ["bootleg/export.py"], mlflow_at


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
    c = tracking.client()
    run = c.get_run(rid)
    assert run.data.params["model.size"] == "micro"
    assert run.data.params["targets.blocks"] == "[1, 4, 8]"
    assert run.data.metrics == {"a": 1.0}
    assert run.data.tags[tracking.TAG_DATA_HASH] == dataset_fingerprint("embedded")
    assert len(run.data.tags[tracking.TAG_DATA_HASH]) == 64
    assert run.data.tags[tracking.TAG_DATASET] == "embedded"
    # MLflow 3's UI opens a model-training experiment on its runs, not on the GenAI overview
    exp = c.get_experiment(run.info.experiment_id)
    assert exp.tags[tracking.TAG_EXPERIMENT_KIND] == "custom_model_development"
    assert (tmp_path / "mlflow.db").is_file()
    assert list((tmp_path / "mlartifacts").rglob("x.txt"))


def test_dataset_fingerprint_of_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOOTLEG_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "imgs"
    (root / "train" / "a").mkdir(parents=True)
    (root / "train" / "a" / "0.png").write_bytes(b"one")
    first = dataset_fingerprint("imagefolder", str(root))
    assert first == dataset_fingerprint("imagefolder", str(root))
    (root / "train" / "a" / "1.png").write_bytes(b"two")
    assert dataset_fingerprint("imagefolder", str(root)) != first
    with pytest.raises(BootlegError, match="not a folder"):
        dataset_fingerprint("imagefolder", str(tmp_path / "none"))


@pytest.mark.slow
def test_training_survives_60s_server_loss(start_mlflow_server, tmp_path: Path, monkeypatch) -> None:
    """The MLflow server is gone for 60 s in the middle of a run: every callback returns at
    once (training carries on), and after the server is back every metric is in it."""
    from bootleg.train import pretrain

    server = start_mlflow_server()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    cfg = load_config(
        ROOT / "params.yaml",
        ["run.steps=10", "optim.batch_size=16", "data.limit=160", "run.log_every=1", "run.progress=false",
         "optim.warmup_epochs=1", "run.checkpoint_every=100"],
    )  # fmt: skip
    rid = tracking.start_run(cfg, experiment="server-loss")
    cb = tracking.MLflowCallback(rid, system_every=1.0)
    slowest: list[float] = []
    down: dict[str, float] = {}

    def timed(rec: dict) -> None:
        t0 = time.monotonic()
        cb(rec)
        slowest.append(time.monotonic() - t0)

    def outage(rec: dict) -> None:
        if rec["step"] == 3:
            server.stop(signal.SIGKILL)
            down["at"] = time.monotonic()
        if rec["step"] == 7:  # steps 4-7 train and log while the server is gone; then 60 s pass
            time.sleep(max(0.0, 60 - (time.monotonic() - down["at"])))
            start_mlflow_server(port=server.port, root=server.root)  # same db, same address

    out = pretrain(cfg, tmp_path / "run", callbacks=[timed, outage])
    assert (out / "encoder.safetensors").is_file()
    assert max(slowest) < 1.0, slowest  # the callback never waited for the server
    assert cb.close() == 0
    c = tracking.client()
    assert sorted(m.step for m in c.get_metric_history(rid, "loss")) == list(range(1, 11))
    assert sorted(m.step for m in c.get_metric_history(rid, "lr")) == list(range(1, 11))
    assert any(k.startswith("system/cpu_utilization") for k in c.get_run(rid).data.metrics)


def test_close_without_server_reports_undelivered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cb = tracking.MLflowCallback("0" * 32, uri=f"http://127.0.0.1:{free_port()}", system_every=0)
    cb({"step": 1, "loss": 1.0})
    with pytest.warns(RuntimeWarning, match="not delivered"):
        assert cb.close() == 1


def report_with(score: float, probes: tuple[str, ...] = ("linear_cls", "knn")) -> ProbeReport:
    return ProbeReport(
        checkpoint="x",
        dataset="embedded",
        seed=0,
        results=[ProbeResult(probe=p, metric="top1", score=score - i) for i, p in enumerate(probes)],
    )


def registered(name: str, tmp_path: Path, i: int, rep: ProbeReport, key: registry.CompareKey, kind: str):
    rid = tracking.start_run(None, experiment="registry")
    tracking.log_metrics(rid, rep.metrics())
    tracking.set_tags(rid, {**key.tags(), registry.TAG_KIND: kind})
    version = registry.register_encoder(rid, tiny_encoder(tmp_path / f"r{i}", seed=i), name)
    tracking.end_run(rid)
    return version


def test_champion_rule_compares_like_with_like(mlflow_uri: str, tmp_path: Path) -> None:
    """The demo, a better-scoring smoke run, an ablation variant and a run on other probes in one
    store: @champion stays on the demo until a full run on the same key beats it."""
    name = "rule-test"
    demo_rep = report_with(40.0)
    key = registry.CompareKey(
        dataset="embedded@abc", model="micro/32px/p4", probes="knn,linear_cls@quick", metric="probe.linear_cls.top1"
    )
    smoke_key = key.model_copy(update={"probes": "knn@quick", "metric": "probe.knn.top1"})

    def step(i: int, rep: ProbeReport, k: registry.CompareKey, kind: str, force: bool = False) -> registry.Decision:
        v = registered(name, tmp_path, i, rep, k, kind)
        return registry.promote(name, "champion", v, k, rep.metrics()[k.metric], kind, force)

    d = step(0, demo_rep, key, "train")
    assert d.moved and d.champion == "1" and "no version" in d.reason
    d = step(1, report_with(90.0, ("knn",)), smoke_key, "smoke")
    assert not d.moved and d.champion == "1" and "smoke run is never promoted" in d.reason
    d = step(2, report_with(95.0), key, "ablation")
    assert not d.moved and d.champion == "1" and "--promote" in d.reason
    d = step(3, report_with(80.0, ("knn",)), smoke_key, "train")  # a full run on other probes
    assert not d.moved and "another key" in d.reason and "probes" in d.reason
    d = step(4, report_with(39.0), key, "train")
    assert not d.moved and "<=" in d.reason
    d = step(5, report_with(41.0), key, "train")
    assert d.moved and d.champion == "6" and "41.00 > 40.00" in d.reason
    d = step(6, report_with(99.0), key, "ablation", force=True)
    assert d.moved and d.champion == "7"
    c = tracking.client()
    assert c.get_model_version_by_alias(name, "champion").version == "7"


def test_register_and_download(mlflow_uri: str, tmp_path: Path) -> None:
    rid = tracking.start_run(None, experiment="registry-dl")
    version = registry.register_encoder(rid, tiny_encoder(tmp_path / "r"), "dl-test")
    tracking.client().set_registered_model_alias("dl-test", "champion", version)
    local = registry.download_encoder("models:/dl-test@champion")
    enc, ref = load_encoder(local), load_encoder(tmp_path / "r")
    for a, b in zip(enc.state_dict().values(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert (local / "config.yaml").is_file()
    with pytest.raises(BootlegError, match="cannot download"):
        registry.download_encoder("models:/dl-test@nope")


def test_table_and_chart_artifacts(tmp_path: Path) -> None:
    from flows import report

    rows = [{"Variant": "a", "kNN": 30.5, "CLS": 31.0}, {"Variant": "b", "kNN": 33.0, "CLS": None}]
    png = report.plot_scores(["Variant", "CLS", "kNN"], rows, tmp_path / "c.png", "t")
    assert png.stat().st_size > 1000
    rid = tracking.start_run(None, experiment="tables")
    tracking.log_table(rid, report.table_records(["Variant", "CLS", "kNN"], rows), "comparison.json")
    arts = {a.path for a in tracking.client().list_artifacts(rid)}
    assert "comparison.json" in arts
    local = tracking.client().download_artifacts(rid, "comparison.json", str(tmp_path))
    table = json.loads(Path(local).read_text())
    assert table["columns"] == ["Variant", "CLS", "kNN"] and [r[0] for r in table["data"]] == ["a", "b"]
