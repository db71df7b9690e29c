#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster on 127.0.0.1 for the tests (Optuna's multi-worker storage).
#
#   source .ci/postgres.sh      # exports BOOTLEG_TEST_PG_URL
#   bash .ci/postgres.sh        # prints the URL; also written to $BOOTLEG_PG_DATA/url
#
# Installs Debian's postgresql if no server binaries are present (root, apt), then runs the
# server as the `postgres` user with its data in $BOOTLEG_PG_DATA (default /tmp/bootleg-pg),
# listening on 127.0.0.1 only, port $BOOTLEG_PG_PORT (default 55432, or a free one). The
# database `bootleg_test` belongs to user `bootleg` (password `bootleg`; a test cluster only).
# Idempotent: a cluster already running there is reused.
set -euo pipefail

_pg_main() {
  local data="${BOOTLEG_PG_DATA:-/tmp/bootleg-pg}"
  local port="${BOOTLEG_PG_PORT:-55432}"
  local user=bootleg pass=bootleg db=bootleg_test

  if ! compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null; then
    echo "postgres.sh: installing postgresql (apt)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  fi
  local bin
  bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
  id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/false postgres
  local as_pg=(runuser -u postgres --)
  [ "$(id -u)" = 0 ] || as_pg=()

  mkdir -p "$data"
  [ -z "${as_pg[*]}" ] || chown postgres "$data"
  chmod 700 "$data"
  if [ -f "$data/port" ] && "${as_pg[@]}" "$bin/pg_ctl" -D "$data/db" status >/dev/null 2>&1; then
    port="$(cat "$data/port")"
  else
    if [ ! -f "$data/db/PG_VERSION" ]; then
      printf '%s\n' "$pass" > "$data/pw"
      [ -z "${as_pg[*]}" ] || chown postgres "$data/pw"
      "${as_pg[@]}" "$bin/initdb" -D "$data/db" -U "$user" --pwfile="$data/pw" \
        --auth-host=scram-sha-256 --auth-local=trust -E UTF8 >"$data/initdb.log" 2>&1 \
        || { cat "$data/initdb.log" >&2; return 1; }
      rm -f "$data/pw"
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then  # port taken by someone else
      port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    fi
    "${as_pg[@]}" "$bin/pg_ctl" -D "$data/db" -l "$data/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $data -c max_connections=200 -c fsync=off" start >/dev/null \
      || { tail -20 "$data/server.log" >&2; return 1; }
    echo "$port" > "$data/port"
  fi
  if ! "${as_pg[@]}" "$bin/psql" -h "$data" -p "$port" -U "$user" -d postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1; then
    "${as_pg[@]}" "$bin/createdb" -h "$data" -p "$port" -U "$user" "$db"
  fi
  BOOTLEG_TEST_PG_URL="postgresql://$user:$pass@127.0.0.1:$port/$db"
  echo "$BOOTLEG_TEST_PG_URL" > "$data/url"
  chmod 644 "$data/url"
  export BOOTLEG_TEST_PG_URL
  echo "postgres.sh: $BOOTLEG_TEST_PG_URL (data in $data; stop: runuser -u postgres -- $bin/pg_ctl -D $data/db stop)" >&2
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  _pg_main
  echo "$BOOTLEG_TEST_PG_URL"
else
  _pg_main
fi
