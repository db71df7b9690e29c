"""The pipeline's optional ``finetune-encoder`` task (issue 11, item 3): after the probes it
fine-tunes the encoder the flow just trained, into ``<run>/finetune``, and logs to the same
MLflow run. Micro ViT, a few pretraining steps, two fine-tuning epochs on the embedded data;
a real Prefect server and the embedded MLflow store read back through ``MlflowClient``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from test_flows import TINY, prefect_read

from bootleg.errors import BootlegError
from flows import tracking
from flows.params import PipelineParams, validate

#: two epochs of five steps on 160 images, every piece of MAE's recipe switched on: part from
#: the params file's ``finetune:`` section, the rest from the flow's ``finetune_set``
FT_SECTION = {"epochs": 2, "batch_size": 32, "limit": 999}
FT_SET = ["limit=160", "test_limit=80", "warmup_epochs=0.5", "workers=0", "eval_crop=1.0"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Two shared cores: one intra-op thread is much faster than two contended ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_params(tmp_path: Path) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(TINY, sort_keys=False))
    return p


def task_names(flow_run_id: str) -> list[str]:
    """The flow run's task runs by name, in the order they started."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flt = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    runs = prefect_read(lambda cl: cl.read_task_runs(flow_run_filter=flt))
    return [r.name.rsplit("-", 1)[0] for r in sorted(runs, key=lambda r: r.start_time)]


def test_finetune_task_logs_to_the_pipeline_run(tiny_params: Path, tmp_path: Path, prefect_api: str) -> None:
    from flows.pipeline import pipeline

    tiny_params.write_text(yaml.safe_dump({**TINY, "finetune": FT_SECTION}, sort_keys=False))
    base = {"params": str(tiny_params), "experiment": "pipeline-ft", "model_name": "ft-encoder"}
    summary = pipeline(
        PipelineParams(**base, out=str(tmp_path / "on"), run_name="on", finetune=True, finetune_set=FT_SET)
    )
    ft = summary["finetune"]
    written = json.loads((tmp_path / "on" / "finetune" / "finetune.json").read_text())
    assert written == ft and ft["steps"] == 10 and ft["train_images"] == 160 and ft["test_images"] == 80
    assert Path(ft["checkpoint"]) == tmp_path / "on"  # the encoder this flow trained and probed
    assert summary["promotion"]["moved"]  # the @champion rule still follows the probes

    c = tracking.client()
    run = c.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    m, params = run.data.metrics, run.data.params
    assert m["finetune.top1"] == ft["score"] and m["finetune.top5"] == ft["top5"] and "probe.knn.top1" in m
    assert m["finetune.train_images"] == 160 and m["finetune.classes"] == 10
    for curve in ("finetune.train_loss", "finetune.lr"):
        history = c.get_metric_history(run.info.run_id, curve)
        assert sorted(h.step for h in history) == [1, 2], curve
    assert [h.step for h in c.get_metric_history(run.info.run_id, "finetune.top1")] == [2]
    assert params["finetune.epochs"] == "2" and params["finetune.batch_size"] == "32"
    assert params["finetune.recipe"] == "vit_b" and params["finetune.dataset"] == "embedded"
    assert params["model.size"] == "micro"  # the pretraining config, on the same run
    assert "finetune/finetune.json" in {a.path for a in c.list_artifacts(run.info.run_id, "finetune")}
    local = c.download_artifacts(run.info.run_id, "finetune/finetune.json", str(tmp_path / "dl"))
    assert json.loads(Path(local).read_text()) == ft
    assert f"top-1 **{ft['score']:.1f}** %" in Path(summary["report"]).read_text()

    names = task_names(run.data.tags["prefect.flow_run_id"])
    assert names.index("finetune-encoder") > names.index("probes")

    # without the flag: no task, no folder, nothing named finetune in the run (the params
    # file's finetune: section is not logged as params until a fine-tuning runs)
    off = pipeline(PipelineParams(**base, out=str(tmp_path / "off"), run_name="off", probes=[], register_model=False))
    run = c.get_run(off["run_id"])
    assert "finetune" not in off and not (tmp_path / "off" / "finetune").exists()
    assert not [k for k in (*run.data.metrics, *run.data.params) if k.startswith("finetune.")]
    assert "finetune" not in {a.path for a in c.list_artifacts(run.info.run_id)}
    assert "finetune-encoder" not in task_names(run.data.tags["prefect.flow_run_id"])


def test_command_line_and_form_take_finetune_settings(tiny_params: Path) -> None:
    from flows.pipeline import parse_args

    spec, _ = parse_args(["--params", str(tiny_params), "--finetune-set", "epochs=3", "--finetune-fraction", "0.01"])
    assert spec.finetune and spec.finetune_set == ["epochs=3", "fraction=0.01"]
    spec, _ = parse_args(["--params", str(tiny_params), "--finetune"])
    assert spec.finetune and spec.finetune_set == []
    assert not parse_args(["--params", str(tiny_params)])[0].finetune
    with pytest.raises(BootlegError, match=r"^finetune_set: finetune\.epochs: .*greater than or equal to 1"):
        parse_args(["--params", str(tiny_params), "--finetune-set", "epochs=0"])
    with pytest.raises(BootlegError, match=r"^finetune_set: finetune\.epoch: unknown key$"):
        parse_args(["--params", str(tiny_params), "--finetune-set", "epoch=3"])
    with pytest.raises(BootlegError, match="^finetune_set: .* finetune is false"):
        validate(PipelineParams, {"params": str(tiny_params), "finetune_set": ["epochs=3"]})
    form = PipelineParams.model_json_schema()["properties"]
    assert form["finetune"]["default"] is False and form["finetune_set"]["type"] == "array"
