#!/bin/sh
# Make sure PostgreSQL server binaries exist for the test suite (tests/support/postgres.py
# starts a throw-away server from them when there is neither Docker nor CLINSTREAM_TEST_PG_DSN).
# Found: exit 0. Missing and root: install quietly with apt-get. Missing and not root: say what to install.
set -eu

have_pg() {
    for d in "$(pg_config --bindir 2>/dev/null || true)" /usr/lib/postgresql/*/bin /usr/pgsql-*/bin /usr/local/pgsql/bin; do
        if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then
            return 0
        fi
    done
    command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1
}

if [ -n "${CLINSTREAM_TEST_PG_DSN:-}" ] || have_pg; then
    exit 0
fi

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure_postgres: installing PostgreSQL server binaries (apt-get install postgresql)..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    if have_pg; then
        exit 0
    fi
    echo "ensure_postgres: apt-get ran but initdb/pg_ctl/postgres are still not found" >&2
    exit 1
fi

cat >&2 <<'MSG'
ensure_postgres: PostgreSQL server binaries (initdb, pg_ctl, postgres) are not installed.
The tests start a throw-away PostgreSQL from them. Install one of:
  Debian/Ubuntu:  sudo apt-get install -y postgresql
  Fedora/RHEL:    sudo dnf install -y postgresql-server
  macOS:          brew install postgresql@15
or set CLINSTREAM_TEST_PG_DSN=postgresql://user@host:port/db to use a server you manage.
MSG
exit 1
