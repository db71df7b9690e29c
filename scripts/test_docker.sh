#!/usr/bin/env bash
# make test-docker: the compose stack (docker/compose.yaml), for real, on this machine.
#   1. a Debian base image made locally (docker/make-base.sh: debootstrap + docker import; cached)
#   2. the stack's images built FROM it (PostgreSQL, the MLflow/Prefect/optuna-dashboard server
#      image, the worker image with PyPI's torch on CPU); Docker's layer cache keeps them
#   3. the stack up under a throw-away project name, host networking, every server bound to
#      127.0.0.1 on ports of its own (so that it does not clash with servers of a developer)
#   4. the pipeline deployment run through the Prefect worker (`prefect deployment run`, micro
#      model, few steps, kNN probe) and the results checked over the servers' REST APIs
#      (tests/docker/check_stack.py): run, metrics, registered model and alias, artifacts
#   5. everything torn down (containers, network state, volumes), also on failure or Ctrl-C
# Opt-in, not in CI: needs a running Docker daemon and Debian's debootstrap; see docs/docker.md.
#
# Settings (environment): TEST_DOCKER_STEPS (30), TEST_DOCKER_KEEP=1 (leave the stack up),
# TEST_DOCKER_*_PORT, DOCKER, COMPOSE ("docker compose" or docker-compose, found by default).
set -euo pipefail
cd "$(dirname "$0")/.."

t_start=$(date +%s)
phase_start=$t_start
current=setup
timings=()
phase() { # end the current phase, start the next one
  local now
  now=$(date +%s)
  timings+=("$(printf '%-10s %4d s' "$current" $((now - phase_start)))")
  phase_start=$now
  current="${1:-}"
}

DOCKER="${DOCKER:-docker}"
if [ -z "${COMPOSE:-}" ]; then
  if $DOCKER compose version >/dev/null 2>&1; then COMPOSE="$DOCKER compose"
  elif command -v docker-compose >/dev/null; then COMPOSE=docker-compose
  else echo "error: neither 'docker compose' nor docker-compose found (apt-get install docker-compose)" >&2; exit 2
  fi
fi
$DOCKER info >/dev/null 2>&1 || {
  echo "error: no Docker daemon answers (apt-get install docker.io; dockerd &, see docs/docker.md)" >&2
  exit 2
}

STEPS="${TEST_DOCKER_STEPS:-30}"
PROJECT="bootleg-test-docker"
BASE_IMAGE="bootleg-base:local"
export COMPOSE_PROJECT_NAME="$PROJECT"
export BIND_ADDRESS=127.0.0.1
export POSTGRES_PORT="${TEST_DOCKER_POSTGRES_PORT:-15432}" MLFLOW_PORT="${TEST_DOCKER_MLFLOW_PORT:-15000}"
export PREFECT_PORT="${TEST_DOCKER_PREFECT_PORT:-14200}" OPTUNA_DASHBOARD_PORT="${TEST_DOCKER_OPTUNA_PORT:-18080}"
export POSTGRES_IMAGE=bootleg-postgres:local SERVER_IMAGE=bootleg-server:local WORKER_IMAGE=bootleg-worker-cpu:local
export PREFECT_WORK_POOL=docker-test MLFLOW_WORKERS=1
export POSTGRES_USER=bootleg
POSTGRES_PASSWORD="$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')"
export POSTGRES_PASSWORD

for port in "$POSTGRES_PORT" "$MLFLOW_PORT" "$PREFECT_PORT" "$OPTUNA_DASHBOARD_PORT"; do
  # SO_REUSEADDR: connections of an earlier run in TIME_WAIT do not count, a listener does
  python3 -c "import socket as S,sys; s=S.socket(); s.setsockopt(S.SOL_SOCKET, S.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()" "$port" 2>/dev/null || {
    echo "error: port $port on 127.0.0.1 is taken; set TEST_DOCKER_*_PORT (scripts/test_docker.sh)" >&2
    exit 2
  }
done

logs="${TEST_DOCKER_LOGS:-runs/test-docker}"
mkdir -p "$logs"
env_file="$(mktemp)"
chmod 600 "$env_file"
# every setting the stack reads, so that a developer's docker/.env plays no part
for v in COMPOSE_PROJECT_NAME BIND_ADDRESS POSTGRES_USER POSTGRES_PASSWORD POSTGRES_PORT POSTGRES_IMAGE MLFLOW_PORT \
  MLFLOW_WORKERS PREFECT_PORT PREFECT_WORK_POOL OPTUNA_DASHBOARD_PORT SERVER_IMAGE WORKER_IMAGE; do
  printf '%s=%s\n' "$v" "${!v}"
done >"$env_file"
compose() { $COMPOSE -p "$PROJECT" -f docker/compose.yaml --env-file "$env_file" --profile cpu "$@"; }

# Every 2 s while the stack is up: TCP/UDP sockets of the stack's processes (docker top) whose
# peer is not a loopback address go to $logs/non-loopback.txt (a sample, not a packet capture).
sampler_pid=""
watch_sockets() {
  local out="$logs/non-loopback.txt" pids ids
  : >"$out"
  while sleep 2; do
    ids=$($DOCKER ps -q --filter "label=com.docker.compose.project=$PROJECT")
    [ -n "$ids" ] || continue
    pids=$(for c in $ids; do $DOCKER top "$c" -eo pid 2>/dev/null | tail -n +2; done | tr -s ' \n' ' ')
    ss -tunpH 2>/dev/null | awk -v pids=" $pids " '
      { peer = $6; sub(/:[^:]*$/, "", peer) }
      peer ~ /^(127\.|\[::1\]|\[::ffff:127\.|\*|0\.0\.0\.0|\[::\])/ { next }
      { rest = $0
        while (match(rest, /pid=[0-9]+/)) { p = substr(rest, RSTART + 4, RLENGTH - 4)
          if (index(pids, " " p " ")) { print; break }
          rest = substr(rest, RSTART + RLENGTH) } }' >>"$out"
  done
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null || true
  if [ -n "${TEST_DOCKER_KEEP:-}" ] && [ "$rc" = 0 ]; then
    echo "stack left up (TEST_DOCKER_KEEP): $COMPOSE -p $PROJECT -f docker/compose.yaml --profile cpu down -v"
  else
    phase teardown
    compose logs --no-color >"$logs/compose.log" 2>&1 || true
    compose down -v --remove-orphans >"$logs/down.log" 2>&1 || echo "warning: compose down failed, see $logs/down.log"
  fi
  phase
  rm -f "$env_file"
  echo
  echo "timings:"
  printf '  %s\n' "${timings[@]}"
  printf '  %-10s %4d s\n' total $(($(date +%s) - t_start))
  [ "$rc" = 0 ] && echo "test-docker: PASSED" || echo "test-docker: FAILED (exit $rc; logs in $logs/)"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

phase base
echo "== base image ($COMPOSE, $($DOCKER version -f '{{.Server.Version}}' 2>/dev/null) daemon)"
docker/make-base.sh "$BASE_IMAGE"

phase build
echo "== images from $BASE_IMAGE (build logs in $logs/build-*.log)"
# BuildKit reads docker/Dockerfile.*.dockerignore; a client without buildx falls back to Debian's
# docker 20.10 client (BuildKit built in), then to the legacy builder.
builders=("$DOCKER")
[ -x /usr/bin/docker ] && [ "$DOCKER" != /usr/bin/docker ] && builders+=(/usr/bin/docker)
build() { # Dockerfile tag [build args...]
  local file=$1 tag=$2 b log="$logs/build-${1#Dockerfile.}.log"
  shift 2
  local args=(--network host -f "docker/$file" -t "$tag" --build-arg "BASE_IMAGE=$BASE_IMAGE" "$@" .)
  : >"$log"
  for b in "${builders[@]}" legacy; do
    if [ "$b" = legacy ]; then
      DOCKER_BUILDKIT=0 $DOCKER build "${args[@]}" >>"$log" 2>&1 && b="$DOCKER (legacy builder)" && break
    elif DOCKER_BUILDKIT=1 $b build --progress plain "${args[@]}" >>"$log" 2>&1; then
      break
    elif tail -5 "$log" | grep -q "buildx component is missing"; then
      continue
    fi
    tail -30 "$log" >&2
    echo "error: building $tag from docker/$file failed (log: $log)" >&2
    return 1
  done
  echo "  $tag: $($DOCKER image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.2f GB", $1/1e9}'), built with $b"
}
build Dockerfile.postgres "$POSTGRES_IMAGE"
build Dockerfile.server "$SERVER_IMAGE"
build Dockerfile.gpu "$WORKER_IMAGE" --build-arg TORCH_INDEX_URL=

phase up
echo "== stack up: project $PROJECT, host network, 127.0.0.1 ports pg $POSTGRES_PORT, mlflow $MLFLOW_PORT, prefect $PREFECT_PORT, optuna $OPTUNA_DASHBOARD_PORT"
compose up -d --no-build postgres mlflow prefect-server optuna-dashboard cpu-worker
watch_sockets &
sampler_pid=$!
prefect_api="http://127.0.0.1:$PREFECT_PORT/api"
mlflow_url="http://127.0.0.1:$MLFLOW_PORT"
python3 tests/docker/check_stack.py wait-deployment --prefect "$prefect_api" --name pipeline/pipeline --timeout 300

echo "== listening sockets of the stack (each must be on 127.0.0.1)"
listening="$(ss -ltnH | awk '{print $4}' | grep -E ":($POSTGRES_PORT|$MLFLOW_PORT|$PREFECT_PORT|$OPTUNA_DASHBOARD_PORT)\$" | sort -u)"
echo "$listening" | sed 's/^/  /'
if echo "$listening" | grep -vq '^127\.0\.0\.1:'; then
  echo "error: a server of the stack listens beyond 127.0.0.1" >&2
  exit 1
fi
[ "$(echo "$listening" | wc -l)" = 4 ] || { echo "error: expected 4 listening servers" >&2; exit 1; }
for ui in "MLflow UI:$MLFLOW_PORT" "Prefect UI:$PREFECT_PORT" "optuna-dashboard:$OPTUNA_DASHBOARD_PORT"; do
  curl -fsS -o /dev/null "http://127.0.0.1:${ui##*:}/" || { echo "error: ${ui%:*} does not answer on its page" >&2; exit 1; }
  echo "  ${ui%:*} page answers on 127.0.0.1:${ui##*:}"
done

phase run
run_name="docker-test-$(date +%Y%m%d-%H%M%S)"
experiment=docker-test
model=bootleg-encoder-docker-test
params=$(python3 - "$run_name" "$experiment" "$model" "$STEPS" <<'PY'
import json, sys
name, exp, model, steps = sys.argv[1:]
spec = {
    "run_name": name, "experiment": exp, "model_name": model, "probes": ["knn"],
    "overrides": [f"run.steps={steps}", "run.checkpoint_every=1000", "run.log_every=5", "run.monitor_every=1000"],
}
print(json.dumps({"spec": spec}))
PY
)
echo "== prefect deployment run pipeline/pipeline (through the worker): $params"
compose exec -T cpu-worker prefect deployment run pipeline/pipeline --params "$params" \
  --flow-run-name "$run_name" --watch --watch-interval 5 --watch-timeout 1200 | tee "$logs/deployment-run.log"

phase check
echo "== passwords out of process lists"
if ps -eo args | grep -v grep | grep -qF "$POSTGRES_PASSWORD"; then
  echo "error: the database password appears in a process's command line" >&2
  exit 1
fi
echo "  the database password is in no command line on this machine"

echo "== connections of the stack's processes to non-loopback addresses (sampled every 2 s)"
if [ -s "$logs/non-loopback.txt" ]; then
  sed 's/^/  /' "$logs/non-loopback.txt" | sort -u | head -20 >&2
  echo "error: the stack talked to addresses other than loopback" >&2
  exit 1
fi
echo "  none seen"

echo "== checks on the stack's Prefect and MLflow"
python3 tests/docker/check_stack.py check --prefect "$prefect_api" --mlflow "$mlflow_url" \
  --flow-run-name "$run_name" --experiment "$experiment" --model "$model" --steps "$STEPS" --pool "$PREFECT_WORK_POOL"
