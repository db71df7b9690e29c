"""The pipeline's ``finetune-encoder`` task: :func:`bootleg.finetune.run.finetune` on the
encoder the flow just trained, into ``<run>/finetune``, logged to the flow's MLflow run.

MLflow gets, under the prefix ``finetune.``:

* metrics ``finetune.top1`` and ``finetune.top5`` (test split, after the last epoch, at step =
  epochs), ``finetune.train_images``, ``finetune.test_images``, ``finetune.classes``,
  ``finetune.steps``;
* per-epoch curves ``finetune.train_loss`` and ``finetune.lr`` (step = epoch), streamed while
  it trains through the same never-blocking :class:`~flows.tracking.MLflowCallback` as
  pretraining;
* params: the resolved ``finetune:`` settings (``finetune.epochs``, ``finetune.blr``, ...),
  ``finetune.dataset``, ``finetune.seed``, ``finetune.peak_lr``;
* artifact ``finetune/finetune.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from bootleg.schema import flatten
from flows import tracking

FINETUNE_DIR = "finetune"
PREFIX = "finetune."


def finetune_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The scalar results of ``finetune.json`` as ``finetune.<name>`` metrics."""
    out = {f"{PREFIX}{result['metric']}": result["score"], f"{PREFIX}top5": result["top5"]}
    for key in ("train_images", "test_images", "classes", "steps"):
        out[PREFIX + key] = result[key]
    return out


def finetune_params(result: dict[str, Any]) -> dict[str, Any]:
    """The settings ``finetune.json`` records (resolved recipe included) as ``finetune.<key>`` params."""
    params = flatten(result["config"], PREFIX)
    params.update(
        {PREFIX + "dataset": result["dataset"], PREFIX + "seed": result["seed"], PREFIX + "peak_lr": result["lr"]}
    )
    return params


@task(name="finetune-encoder", cache_policy=NONE)
def finetune_step(
    run_dir: str,
    out: str,
    params: str,
    overrides: list[str],
    finetune_set: list[str],
    run_id: str,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Fine-tune the encoder of ``run_dir`` end to end with the config's ``finetune:`` section
    and then the ``finetune_set`` settings (the run's seed and device); returns ``finetune.json``'s content. The run folder, not its
    ``models:/`` URI, is the checkpoint: the same weights, under a name that stays the same
    when the flow resumes (``finetune_state.pt`` is keyed on it)."""
    from bootleg.config import load_config
    from bootleg.finetune import load_finetune_config
    from bootleg.finetune.run import RESULT_FILE, finetune

    cfg = load_config(params, overrides)
    ft = load_finetune_config(cfg.finetune.model_dump(exclude_unset=True), finetune_set, "finetune_set")
    logger = get_run_logger()
    cb = tracking.MLflowCallback(run_id, uri=tracking_uri, system_every=0)

    def on_epoch(rec: dict[str, float]) -> None:
        cb({"step": rec["epoch"], PREFIX + "train_loss": rec["train_loss"], PREFIX + "lr": rec["lr"]})

    try:
        result = finetune(run_dir, out, ft, seed=cfg.run.seed, device=cfg.run.device, log=logger.info,
                          on_epoch=on_epoch)  # fmt: skip
    finally:
        if left := cb.close():
            logger.warning("tracking server unreachable: %d fine-tuning metrics not delivered", left)
    tracking.log_metrics(run_id, finetune_metrics(result), step=result["config"]["epochs"], uri=tracking_uri)
    tracking.log_params(run_id, finetune_params(result), uri=tracking_uri)
    tracking.log_artifacts(run_id, [Path(out) / RESULT_FILE], FINETUNE_DIR, uri=tracking_uri)
    logger.info("finetune: top1 %.2f top5 %.2f (%d train images)", result["score"], result["top5"],
                result["train_images"])  # fmt: skip
    return result
