#!/usr/bin/env bash
# bootleg-entrypoint: what the worker image runs.
#   worker [ARGS...]          a Prefect process worker on $PREFECT_WORK_POOL (default gpu); it first
#                             creates the pool and registers the pipeline, ablation and study
#                             deployments on it (BOOTLEG_DEPLOY=0 skips that)
#   deploy                    only register those deployments (docker/deploy.py)
#   serve                     serve the pipeline, ablation and study deployments (flows/serve.py)
#   flow NAME [ARGS...]       one flow from the command line: pipeline | ablation | study
#   study-worker [ARGS...]    join an Optuna study (python -m flows.study worker ...)
#   anything else             run as a command (e.g. bootleg pretrain ..., bash)
set -euo pipefail
cmd="${1:-worker}"
shift || true
deploy() { python /usr/local/lib/bootleg/deploy.py "$@"; }
case "$cmd" in
  worker)
    pool="${PREFECT_WORK_POOL:-gpu}"
    prefect work-pool inspect "$pool" >/dev/null 2>&1 || prefect work-pool create "$pool" --type process
    if [ "${BOOTLEG_DEPLOY:-1}" != 0 ]; then deploy --pool "$pool"; fi
    exec prefect worker start --pool "$pool" --type process "$@"
    ;;
  deploy) deploy --pool "${PREFECT_WORK_POOL:-gpu}" "$@" ;;
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
