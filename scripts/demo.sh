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
echo "== fetch the HARPS spectra (parallel, verified, atomic; embargoed ones wait)"
sed -i 's/^url = .*/&\nfetch_where = "obs_collection = '"'"'HARPS'"'"'"/' demo/mirror.toml
mirror fetch
mirror status --runs 3
echo "== ADQL, answered offline from the local catalogue"
mirror query "SELECT obs_collection, dataproduct_type, COUNT(*) AS n, AVG(snr) AS mean_snr
              FROM ivoa.obscore GROUP BY obs_collection, dataproduct_type ORDER BY n DESC"
mirror query "SELECT TOP 5 obs_publisher_did, target_name, snr,
                     DISTANCE(POINT('ICRS', s_ra, s_dec), POINT('ICRS', 180, -30)) AS dist
              FROM ivoa.obscore
              WHERE CONTAINS(POINT('ICRS', s_ra, s_dec), CIRCLE('ICRS', 180, -30, 20)) = 1
              ORDER BY dist"
