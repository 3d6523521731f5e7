#!/usr/bin/env bash
# Key delivery as users run it: `corridor up --embedded two-site` (both KMEs, the simulated link, audit
# fsync'ed per entry with group commit, metrics on) loaded by the compiled mutual-TLS
# load generator of ../shared/tools (built into a temporary folder, never copied here).
#
#   bash benchmarks/bench_corridor_up.sh [SECONDS]
#
# Prints one line per phase: tlsload's JSON, the CPU seconds the corridor process used
# and its CPU milliseconds per answered request (both KMEs and the simulated link).
# PYTHON (default .venv/bin/python) runs `python -m corridor up`; CORRIDOR_SRC, when
# set, is put first on PYTHONPATH (to measure another checkout with the same venv).
# FILL_S (default 25) is how long the pools fill before the first phase; "non200" in
# tlsload's line counts 503s of an empty pool, which measure the link, not the KME.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
py=${PYTHON:-.venv/bin/python}
if [ -n "${CORRIDOR_SRC:-}" ]; then export PYTHONPATH="$CORRIDOR_SRC${PYTHONPATH:+:$PYTHONPATH}"; fi
tools=${CORRIDOR_TOOLS:-../shared/tools}
tmp=$(mktemp -d)
# Only the process this script started (a pid of 0 would signal the whole group).
trap 'if [ -n "${up:-}" ]; then kill -TERM "$up" 2>/dev/null || true; fi; rm -rf "$tmp"' EXIT
gcc -O2 -o "$tmp/tlsload" "$tools/tlsload.c" -lssl -lcrypto
work="$tmp/run"
"$py" -m corridor up --embedded two-site --workdir "$work" --status-interval-s 600 > "$tmp/up.log" 2>&1 &
up=$!
for _ in $(seq 1 60); do [ -f "$work/corridor-up.json" ] && break; sleep 1; done
sleep "${FILL_S:-25}"  # let the pools fill (FILL_S seconds)
port=$("$py" -c "import json,sys; d=json.load(open(sys.argv[1])); \
print(next(k['base_url'] for k in d['kmes'] if k['kme_id'] == 'kme-a').rsplit(':', 1)[1])" \
  "$work/corridor-up.json")
openssl pkcs8 -topk8 -nocrypt -in "$work/pki/sae/sae-a/key.pem" -out "$tmp/sae-a-key.pem"
auth=(--cert "$work/pki/sae/sae-a/cert.pem" --key "$tmp/sae-a-key.pem" --ca "$work/pki/ca.pem")
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$up/stat"; }
per_request() {  # CPU ms per answered request from tlsload's JSON and clock ticks
  "$py" -c "import json,sys; d=json.loads(sys.argv[1]); n=d['requests']
print(round(int(sys.argv[2]) * 1000 / int(sys.argv[3]) / n, 3) if n else 'n/a')" "$1" "$2" "$ticks"
}
phase() {
  local label=$1; shift
  local before; before=$(cpu)
  local out; out=$("$tmp/tlsload" -p "$port" -d "$seconds" -w 2 "$@" "${auth[@]}")
  local after; after=$(cpu)
  echo "$label | $out | corridor_cpu_s=$(( (after - before) / ticks ))" \
    "corridor_cpu_ms_per_request=$(per_request "$out" $(( after - before )))" \
    "load=$(cut -d' ' -f1 /proc/loadavg)"
}
echo "date: $(date -u +%FT%TZ)  load average: $(cut -d' ' -f1-3 /proc/loadavg)"
idle0=$(cpu); sleep "$seconds"; idle1=$(cpu)
echo "idle (link simulation and distillation only) | corridor_cpu_s=$(( (idle1 - idle0) / ticks ))" \
  "per ${seconds} s"
phase "closed loop, 16 connections, 1 key" -u /api/v1/keys/sae-b/enc_keys -c 16
phase "open loop 500 requests/s, 1 key" -u /api/v1/keys/sae-b/enc_keys -c 16 -r 500
phase "closed loop, 4 connections, number=100" -u /api/v1/keys/sae-b/enc_keys -c 4 \
  -m POST -b '{"number":100}'
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
