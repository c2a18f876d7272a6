#!/bin/sh
# Make sure the PostgreSQL the tests use answers: 127.0.0.1:5432, user postgres without a
# password, database "test" (CLASSCAM_TEST_PG's default, tests/ingest_server/conftest.py).
# make test runs this before the suite. What it does, in order, and only what is needed:
#   - answers already: nothing else;
#   - not root: says what to install and set up, and fails;
#   - as root: installs Debian's postgresql with apt when there is no cluster, starts the
#     clusters that are down (pg_ctlcluster), lets user postgres in from 127.0.0.1 without a
#     password (a "trust" line first in pg_hba.conf: a test machine's setting, never a
#     server's) and creates database "test" if they are missing.
set -eu

HOST=127.0.0.1
PORT=5432

usable() {
	psql -h "$HOST" -p "$PORT" -U postgres -d test -w -Atc 'SELECT 1' >/dev/null 2>&1
}

if command -v psql >/dev/null 2>&1 && usable; then
	echo "PostgreSQL: answering on $HOST:$PORT (user postgres, database test)"
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "PostgreSQL is not usable on $HOST:$PORT as user postgres, database test. Please run:"
	echo "  sudo apt-get install postgresql"
	echo "  add 'host all postgres 127.0.0.1/32 trust' first in pg_hba.conf, reload,"
	echo "  sudo -u postgres createdb test"
	exit 1
fi

if ! command -v pg_lsclusters >/dev/null 2>&1 || [ -z "$(pg_lsclusters -h)" ]; then
	echo "PostgreSQL: installing with apt"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi

pg_lsclusters -h | while read -r version cluster port status _rest; do
	if [ "$status" != online ]; then
		echo "PostgreSQL: starting cluster $version/$cluster (port $port)"
		pg_ctlcluster "$version" "$cluster" start
	fi
done
pg_isready -q -h "$HOST" -p "$PORT" -t 30 || {
	echo "PostgreSQL: no cluster answers on $HOST:$PORT (pg_lsclusters shows which port each has)"
	exit 1
}

as_postgres() {
	runuser -u postgres -- "$@"
}
hba=$(as_postgres psql -p "$PORT" -Atc 'SHOW hba_file')
trust="host all postgres 127.0.0.1/32 trust"
if ! grep -qx "$trust" "$hba"; then
	echo "PostgreSQL: letting user postgres in from $HOST without a password ($hba)"
	sed -i "1i $trust" "$hba"
	as_postgres psql -p "$PORT" -qAtc 'SELECT pg_reload_conf()' >/dev/null
fi
if [ -z "$(as_postgres psql -p "$PORT" -Atc "SELECT 1 FROM pg_database WHERE datname = 'test'")" ]; then
	echo "PostgreSQL: creating database test"
	as_postgres createdb -p "$PORT" test
fi

usable || {
	echo "PostgreSQL: still not usable on $HOST:$PORT as user postgres, database test"
	exit 1
}
echo "PostgreSQL: answering on $HOST:$PORT (user postgres, database test)"
