#!/usr/bin/env bash
# What `corridor up` (the embedded city corridor, nobody else fetching keys) costs the
# machine before and after its pools fill: the CPU the corridor process used in each
# interval (in cores: 1.0 is one core busy), then each link's state at the end.
# With full pools every link's feed pauses (docs/kms-operations.md, "Link states"), so
# the second figure should fall to a few hundredths of a core and every link read
# pool_full, none dead.
#
#   bash benchmarks/bench_corridor_idle.sh [SECONDS] [INTERVAL_S]     # default 300 20
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-300}
interval=${2:-20}
py=${PYTHON:-.venv/bin/python}
tmp=$(mktemp -d)
trap 'if [ -n "${up:-}" ]; then kill -TERM "$up" 2>/dev/null || true; fi; rm -rf "$tmp"' EXIT
echo "# bench_corridor_idle $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)"
echo "# command: bash benchmarks/bench_corridor_idle.sh $seconds $interval"
"$py" -m corridor up --workdir "$tmp/run" --duration-s "$seconds" --status-interval-s "$interval" \
  > "$tmp/up.log" 2>&1 &
up=$!
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$up/stat" 2>/dev/null || echo ""; }
before=$(cpu)
elapsed=0
echo "elapsed_s  cores_used"
while kill -0 "$up" 2>/dev/null && [ "$elapsed" -lt "$seconds" ]; do
  sleep "$interval"
  elapsed=$((elapsed + interval))
  now=$(cpu)
  [ -z "$now" ] && break
  awk -v e="$elapsed" -v a="$before" -v b="$now" -v t="$ticks" -v i="$interval" \
    'BEGIN { printf "%9d  %10.2f\n", e, (b - a) / t / i }'
  before=$now
done
wait "$up" || true
up=""
echo "link states at the last status line:"
grep '^\[' "$tmp/up.log" | tail -1 | grep -o '[a-z0-9-]*--[a-z0-9-]*: state=[a-z_]*' | sed 's/^/  /'
