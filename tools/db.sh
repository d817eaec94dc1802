#!/usr/bin/env bash
# A PostgreSQL server of this clone's own, for Optuna studies that every job of a sweep (on this
# machine or on a cluster's nodes) reports to: `make db-up` / `make db-down`.
#
#   tools/db.sh up       install (apt: Debian's postgresql) and start the server: its own data folder
#                        (.db/), its own port (STN_DB_PORT, default 55432), listening on 127.0.0.1 and
#                        a socket in .db/ only; a role and a database `stn`, whose password is written
#                        to ~/.pgpass (never to a config); a second `up` finds it running
#   tools/db.sh down     stop this clone's server (the server of .db/, no other; the data stays)
#   tools/db.sh status   one line: running or not
#   tools/db.sh url      the storage URL for hydra.sweeper.storage (no password in it)
#
# Its data, socket and log live in .db/ (git-ignored). Needs root (the server runs as the
# `postgres` user) and apt-get where PostgreSQL is not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
STATE="$PWD/.db"
DATA="$STATE/data"
PORT="${STN_DB_PORT:-55432}"
NAME=stn
URL="postgresql://$NAME@127.0.0.1:$PORT/$NAME"

fail() { echo "error: $*" >&2; exit 1; }

bin_dir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

as_postgres() { runuser -u postgres -- "$@"; }

install() {
  if [ -n "$(bin_dir)" ] && [ -x "$(bin_dir)/initdb" ]; then
    return
  fi
  command -v apt-get >/dev/null || fail "PostgreSQL is not installed and this machine has no apt-get to install it (install Debian's postgresql yourself)"
  echo "installing postgresql (apt-get) ..."
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null \
    || fail "apt-get could not install postgresql"
}

running() { [ -f "$DATA/postmaster.pid" ] && as_postgres "$(bin_dir)/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

port_holder() {  # what listens on the port already, in words, or nothing
  ss -ltnp 2>/dev/null | awk -v port=":$PORT" '$4 ~ port"$" {print $6}' | head -1
}

up() {
  [ "$(id -u)" = 0 ] || fail "tools/db.sh up needs root (the server runs as the postgres user)"
  install
  local bin
  bin="$(bin_dir)"
  running || start "$bin"  # a second `up` finds it running, and renews the password
  account "$bin"
  echo "PostgreSQL of this clone is up: hydra.sweeper.storage=$URL (password in $HOME/.pgpass)"
}

start() {
  local bin="$1"
  mkdir -p "$STATE"
  chown postgres "$STATE"
  chmod 700 "$STATE"
  # the server runs as the postgres user, who must be able to pass through every folder above .db/
  as_postgres test -x "$STATE" || fail "the postgres user cannot reach $STATE: a folder above it is private to its owner (mktemp -d makes one, mode 700); clone into a folder others can pass through (chmod o+x on the private one)"
  if [ ! -f "$DATA/PG_VERSION" ]; then
    as_postgres "$bin/initdb" -D "$DATA" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
      >"$STATE/initdb.log" 2>&1 || fail "initdb failed; see $STATE/initdb.log"
  fi
  local holder
  holder="$(port_holder)"
  [ -z "$holder" ] || fail "port $PORT is held already ($holder); start on another with STN_DB_PORT=<port> make db-up"
  as_postgres "$bin/pg_ctl" -D "$DATA" -l "$STATE/server.log" -w -t 30 \
    -o "-p $PORT -c listen_addresses=127.0.0.1 -k $STATE" start >/dev/null \
    || fail "the server did not start within 30 s; see $STATE/server.log"
}

account() {  # the role and database stn, and the role's password in ~/.pgpass
  local bin="$1" password
  password="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  as_postgres "$bin/psql" -q -h "$STATE" -p "$PORT" -d postgres -v ON_ERROR_STOP=1 >/dev/null <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$NAME') THEN CREATE ROLE $NAME LOGIN; END IF;
END \$\$;
ALTER ROLE $NAME PASSWORD '$password';
SQL
  if ! as_postgres "$bin/psql" -tA -h "$STATE" -p "$PORT" -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$NAME'" | grep -q 1; then
    as_postgres "$bin/createdb" -h "$STATE" -p "$PORT" -O "$NAME" "$NAME"
  fi
  # the password goes to ~/.pgpass, where libpq (and so Optuna's storage) reads it
  local pgpass="$HOME/.pgpass"
  touch "$pgpass"
  chmod 600 "$pgpass"
  grep -v "^127.0.0.1:$PORT:$NAME:$NAME:" "$pgpass" >"$pgpass.partial" || true
  echo "127.0.0.1:$PORT:$NAME:$NAME:$password" >>"$pgpass.partial"
  chmod 600 "$pgpass.partial"
  mv "$pgpass.partial" "$pgpass"
}

down() {
  if [ -f "$DATA/PG_VERSION" ] && running; then
    as_postgres "$(bin_dir)/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
    echo "PostgreSQL of this clone stopped (its data stays in $DATA)"
  else
    echo "PostgreSQL of this clone is not running"
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) if [ -n "$(bin_dir)" ] && running; then echo "running: $URL"; else echo "not running"; fi ;;
  url) echo "$URL" ;;
  *) fail "usage: tools/db.sh up | down | status | url" ;;
esac
