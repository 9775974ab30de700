#!/usr/bin/env bash
# Offline demo: start the local DaCHS upstream (an ESO-like archive on 127.0.0.1), mirror it into
# demo/mirror.duckdb past its row limit, change the archive, sync again, fetch the HARPS spectra,
# answer ADQL locally, explain the schema, serve the mirror as a TAP service, and turn the
# spectra into a training set with a first look (demo/spectra/pca.png).
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
echo "== the schema catalogue: what each column means, and what the local data holds"
mirror schema
mirror schema ivoa.obscore.em_min
mirror schema --search "signal noise"
mirror schema --html demo/schema
echo "   (open demo/schema/index.html in a browser: it works offline)"
echo "== the mirror as a TAP service: pyvo (or TOPCAT) use it like the archive"
mirror serve --port 8765 --quiet &
served=$!
trap 'kill $served 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf http://127.0.0.1:8765/availability >/dev/null && break; sleep 0.2; done
python3 - <<'PY'
import pyvo
tap = pyvo.dal.TAPService("http://127.0.0.1:8765")
rows = tap.search("SELECT TOP 3 obs_publisher_did, access_url FROM ivoa.obscore "
                  "WHERE obs_collection = 'HARPS' ORDER BY obs_publisher_did")
for row in rows:
    print(row["obs_publisher_did"], "->", row["access_url"])  # stored products: the local copy
PY
kill $served; wait $served 2>/dev/null || true
echo "== a training set: every stored HARPS spectrum on one grid, and a first look"
mirror export spectra --where "obs_collection = 'HARPS'" --grid 3800:6900:0.05 \
    --normalize median --columns snr,s_ra,s_dec,target_name --out demo/spectra
mirror embed --input demo/spectra --method pca --color snr --out demo/spectra/pca.png
echo "   (demo/spectra/pca.png: the PCA embedding coloured by S/N, and the first components)"
