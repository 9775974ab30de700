#!/usr/bin/env bash
# Offline demo: start the local DaCHS upstream (an ESO-like archive on 127.0.0.1), mirror it into
# demo/mirror.duckdb past its row limit, change the archive, sync again, show the status.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -e . 
UPSTREAM_DEFAULT_MAXREC=500 UPSTREAM_HARD_MAXREC=1000 bash tests/upstream/start.sh
mkdir -p demo
cat > demo/mirror.toml <<'TOML'
[catalogue]
path = "mirror.duckdb"
[store]
root = "store"
[[source]]
name = "eso_sim"
url = "http://127.0.0.1:8080/tap"
TOML
export MIRROR_CONFIG=demo/mirror.toml
echo "== first sync (the service returns at most 1000 rows per request)"
mirror sync
echo "== the archive changes: 20 new, 10 modified, 5 deleted records"
bash tests/upstream/evolve.sh add 20 2>/dev/null
bash tests/upstream/evolve.sh modify 10 2>/dev/null
bash tests/upstream/evolve.sh delete 5 2>/dev/null
echo "== what an incremental sync would change"
mirror sync --dry-run
echo "== incremental sync"
mirror sync
mirror status --runs 3
python3 - <<'PY'
import duckdb
con = duckdb.connect("demo/mirror.duckdb", read_only=True)
print(con.sql("SELECT obs_collection, dataproduct_type, count(*) AS n, round(avg(snr), 1) AS mean_snr "
              "FROM ivoa.obscore GROUP BY ALL ORDER BY n DESC"))
PY
