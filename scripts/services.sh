#!/usr/bin/env bash
# Make sure Postgres and RabbitMQ answer on 127.0.0.1; install them from Debian's packages and
# start them when they are absent. Sourced by scripts/run and scripts/test; exports
# ZENTHOR_PG_ADMIN_URL (a superuser URL on the `postgres` database).
set -euo pipefail

_sudo() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
_log() { printf '[services] %s\n' "$*" >&2; }
_port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
_apt_updated=0
_apt_install() {
  if [ "$_apt_updated" -eq 0 ]; then _sudo apt-get update -qq; _apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive _sudo apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  : "${ZENTHOR_PG_ADMIN_URL:=postgresql://postgres@127.0.0.1:5432/postgres}"
  if _port_open 5432; then export ZENTHOR_PG_ADMIN_URL; return; fi
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    _log "installing PostgreSQL from Debian's packages"
    _apt_install postgresql
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  _log "starting PostgreSQL $version"
  _sudo pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 60); do _port_open 5432 && break; sleep 1; done
  _port_open 5432 || { _log "PostgreSQL did not start"; exit 1; }
  # A fresh Debian cluster wants a password over TCP: give the superuser one we know.
  if ! psql "$ZENTHOR_PG_ADMIN_URL" -tAc 'select 1' >/dev/null 2>&1; then
    _sudo su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
    ZENTHOR_PG_ADMIN_URL=postgresql://postgres:postgres@127.0.0.1:5432/postgres
  fi
  export ZENTHOR_PG_ADMIN_URL
}

ensure_rabbitmq() {
  if _port_open 5672; then return; fi
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    _log "installing RabbitMQ from Debian's packages"
    _apt_install rabbitmq-server
  fi
  _log "starting RabbitMQ"
  _sudo rabbitmq-server -detached >/dev/null 2>&1 || true
  _sudo rabbitmqctl await_startup --timeout 120 >/dev/null 2>&1 || true
  for _ in $(seq 1 120); do _port_open 5672 && break; sleep 1; done
  _port_open 5672 || { _log "RabbitMQ did not start"; exit 1; }
}

ensure_libmagic() {
  # neonize (the WhatsApp client) loads libmagic when it is imported.
  if ldconfig -p 2>/dev/null | grep -q 'libmagic\.so\.1'; then return; fi
  _log "installing libmagic1 from Debian's packages (neonize needs it)"
  _apt_install libmagic1
}

ensure_venv() {
  ensure_libmagic
  if [ ! -x .venv/bin/python ]; then
    _log "creating .venv"
    python3 -m venv .venv
  fi
  # The install is editable: only a changed pyproject.toml needs it again.
  local stamp=.venv/.zenthor-installed want
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    _log "installing the project and its dependencies into .venv (a minute on first start)"
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
    echo "$want" > "$stamp"
  fi
  .venv/bin/python -c "import zenthor, dramatiq, periodiq, neonize.client" || {
    rm -f "$stamp"; _log "the install in .venv is broken: run again to reinstall"; exit 1; }
}
