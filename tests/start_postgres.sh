#!/usr/bin/env bash
# Start Debian's PostgreSQL and make a `pallm` role that may create databases, for the review store's tests.
# Prints the URL to export as PALLM_TEST_POSTGRES_URL, and nothing else on standard output (chatter such as
# "Removed stale pid file." goes to standard error). Needs root (or sudo) on a Debian machine.
set -euo pipefail
exec 3>&1 1>&2
SUDO=$([[ $(id -u) == 0 ]] && echo "" || echo "sudo")
AS_PG=$([[ $(id -u) == 0 ]] && echo "runuser -u postgres --" || echo "sudo -u postgres")
if ! command -v pg_lsclusters >/dev/null; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi
read -r version cluster port status _ < <(pg_lsclusters --no-header | head -1)
# The server must not inherit the URL pipe, or the caller's $(...) would wait for it forever.
[[ $status == online ]] || $SUDO pg_ctlcluster "$version" "$cluster" start 3>&-
for _ in $(seq 30); do $AS_PG psql -p "$port" -qtAc "select 1" >/dev/null 2>&1 && break; sleep 1; done
$AS_PG psql -p "$port" -qtAc "select 1 from pg_roles where rolname = 'pallm'" | grep -q 1 ||
    $AS_PG psql -p "$port" -qc "create role pallm login createdb password 'pallm'" >/dev/null
echo "postgresql://pallm:pallm@127.0.0.1:$port/postgres" >&3
