#!/usr/bin/env bash
# bootleg-entrypoint: what the GPU image runs.
#   worker                    a Prefect process worker on $PREFECT_WORK_POOL (default gpu)
#   serve                     serve the pipeline, ablation and study deployments (flows/serve.py)
#   flow NAME [ARGS...]       one flow from the command line: pipeline | ablation | study
#   study-worker [ARGS...]    join an Optuna study (python -m flows.study worker ...)
#   anything else             run as a command (e.g. bootleg pretrain ..., bash)
set -euo pipefail
cmd="${1:-worker}"
shift || true
case "$cmd" in
  worker)
    pool="${PREFECT_WORK_POOL:-gpu}"
    prefect work-pool inspect "$pool" >/dev/null 2>&1 || prefect work-pool create "$pool" --type process
    exec prefect worker start --pool "$pool" --type process "$@"
    ;;
  serve) exec python -m flows.serve "$@" ;;
  flow)
    name="${1:?flow NAME: pipeline, ablation or study}"
    shift
    case "$name" in
      study) exec python -m flows.study run "$@" ;;
      pipeline | ablation) exec python -m "flows.$name" "$@" ;;
      *) echo "error: unknown flow '$name'; expected pipeline, ablation or study" >&2; exit 2 ;;
    esac
    ;;
  study-worker) exec python -m flows.study worker "$@" ;;
  *) exec "$cmd" "$@" ;;
esac
