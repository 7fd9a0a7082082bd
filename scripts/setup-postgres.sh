#!/usr/bin/env bash
# A local PostgreSQL on 127.0.0.1 for the store's tests (user fluid/fluid). Idempotent.
set -euo pipefail
if ! dpkg-query -W -f='${Status}' postgresql 2>/dev/null | grep -q "ok installed"; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >&2
fi
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | grep -q online; then
  pg_ctlcluster "$version" main start
fi
su postgres -c "psql -tAc \"SELECT 1 FROM pg_roles WHERE rolname='fluid'\"" | grep -q 1 \
  || su postgres -c "psql -q -c \"CREATE ROLE fluid LOGIN SUPERUSER PASSWORD 'fluid'\""
