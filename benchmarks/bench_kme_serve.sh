#!/usr/bin/env bash
# Key delivery as a deployment runs it: two `corridor kme serve` processes (one KME per
# site, SQLite stores, audit fsync'ed per entry with group commit, metrics on, mutual
# TLS with X25519MLKEM768 between them), their link fed from recorded key files (the
# link engine runs elsewhere, as with a vendor device), loaded by the compiled
# mutual-TLS load generator of ../shared/tools (built into a temporary folder, never
# copied here).
#
#   bash benchmarks/bench_kme_serve.sh [SECONDS]
#
# Prints one line per phase: tlsload's JSON, and the CPU seconds and CPU milliseconds
# per answered request of each KME process (kme-a: the master SAE's KME; kme-b: the
# slave's, which accepts the reservations); then the machine's yardstick, a bare
# mutual-TLS hello (bench_machine_yardstick.sh; YARDSTICK=0 skips it), and issue 7's
# throughput targets judged against it (the share of the yardstick, scaled to the
# 9,000-14,000 requests/s it gave when the issue was filed). PYTHON (default
# .venv/bin/python) runs `python -m corridor kme serve`; PYTHONPATH=OTHER/src runs
# another checkout's code with the same interpreter (a before/after comparison in one
# sitting). AUDIT_FSYNC_INTERVAL_S=1 sets both KMEs' audit_fsync_interval_s (default 0:
# every entry durable before the answer): a what-if that measures how much the durable
# audit waits cost, not a configuration to run.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
py=${PYTHON:-.venv/bin/python}
tools=${CORRIDOR_TOOLS:-../shared/tools}
tmp=$(mktemp -d)
# Only the KMEs this script started (a pid of 0 would signal the whole process group).
trap 'for p in ${pid_a:-} ${pid_b:-}; do kill -TERM "$p" 2>/dev/null || true; done
      wait 2>/dev/null || true; rm -rf "$tmp"' EXIT
gcc -O2 -o "$tmp/tlsload" "$tools/tlsload.c" -lssl -lcrypto
free_port() { "$py" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }
port_a=$(free_port); port_b=$(free_port)
mkdir -p "$tmp/keys"
head -c $((256 << 20)) /dev/urandom > "$tmp/keys/alice.bin"
cp "$tmp/keys/alice.bin" "$tmp/keys/bob.bin"
cat > "$tmp/corridor.toml" <<EOF
name = "bench-kme-serve"
[kme]
max_key_count = 4000000
max_key_per_request = 128
[[kmes]]
id = "kme-a"
port = $port_a
audit_fsync_interval_s = ${AUDIT_FSYNC_INTERVAL_S:-0}
[[kmes]]
id = "kme-b"
port = $port_b
audit_fsync_interval_s = ${AUDIT_FSYNC_INTERVAL_S:-0}
[[links]]
id = "link-ab"
alice_kme = "kme-a"
bob_kme = "kme-b"
source = "recorded"
keys_dir = "$tmp/keys"
block_bytes = 1048576
[[saes]]
id = "sae-a"
kme = "kme-a"
[[saes]]
id = "sae-b"
kme = "kme-b"
EOF
"$py" -m corridor pki init --out "$tmp/state/pki" --kme kme-a --kme kme-b --sae sae-a@kme-a \
  --sae sae-b@kme-b > /dev/null
"$py" -m corridor kme serve --config "$tmp/corridor.toml" --kme kme-a --workdir "$tmp/state" \
  > "$tmp/a.log" 2>&1 &
pid_a=$!
"$py" -m corridor kme serve --config "$tmp/corridor.toml" --kme kme-b --workdir "$tmp/state" \
  > "$tmp/b.log" 2>&1 &
pid_b=$!
for _ in $(seq 1 60); do
  grep -q "serving at" "$tmp/a.log" 2>/dev/null && grep -q "serving at" "$tmp/b.log" 2>/dev/null && break
  sleep 1
done
sleep "${FILL_S:-30}"  # the recorded link fills both pools meanwhile (128 MB each)
openssl pkcs8 -topk8 -nocrypt -in "$tmp/state/pki/sae/sae-a/key.pem" -out "$tmp/sae-a-key.pem"
auth=(--cert "$tmp/state/pki/sae/sae-a/cert.pem" --key "$tmp/sae-a-key.pem" --ca "$tmp/state/pki/ca.pem")
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
per_request() {  # CPU ms per answered request from tlsload's JSON and clock ticks
  "$py" -c "import json,sys; d=json.loads(sys.argv[1]); n=d['requests']
print(round(int(sys.argv[2]) * 1000 / int(sys.argv[3]) / n, 3) if n else 'n/a')" "$1" "$2" "$ticks"
}
# PROFILE_DIR=DIR (with py-spy: pip install py-spy; PYSPY names it when it is not on
# PATH) also samples both KMEs during each phase, wall clock and idle threads included,
# into DIR/<phase>-kme-a.txt and -kme-b.txt (py-spy's raw stacks);
# benchmarks/pyspy_split.py sums them up.
profile() {
  [ -n "${PROFILE_DIR:-}" ] || return 0
  local spy=${PYSPY:-py-spy}
  command -v "$spy" > /dev/null || { echo "PROFILE_DIR: $spy not found" >&2; exit 2; }
  mkdir -p "$PROFILE_DIR"
  local name; name=$(echo "$1" | tr -c 'a-z0-9=\n' '-')
  for side in a b; do
    local pid_var="pid_$side"
    "$spy" record -p "${!pid_var}" -r 200 -d "$((seconds + 1))" --idle -f raw \
      -o "$PROFILE_DIR/$name-kme-$side.txt" > /dev/null 2>&1 &
  done
}
phase() {
  local label=$1; shift
  local a0 b0 a1 b1 out
  profile "$label"
  a0=$(cpu $pid_a); b0=$(cpu $pid_b)
  out=$("$tmp/tlsload" -p "$port_a" -d "$seconds" -w 2 "$@" "${auth[@]}")
  a1=$(cpu $pid_a); b1=$(cpu $pid_b)
  if [ -n "${PROFILE_DIR:-}" ]; then sleep 3; fi  # py-spy writes its file
  echo "$label | $out | kme_a_cpu_ms_per_request=$(per_request "$out" $(( a1 - a0 )))" \
    "kme_b_cpu_ms_per_request=$(per_request "$out" $(( b1 - b0 )))" \
    "load=$(cut -d' ' -f1 /proc/loadavg)" | tee -a "$tmp/phases.txt"
}
echo "date: $(date -u +%FT%TZ)  load average: $(cut -d' ' -f1-3 /proc/loadavg)"
idle_a0=$(cpu $pid_a); idle_b0=$(cpu $pid_b); sleep "$seconds"
echo "idle (ingesting recorded blocks only) | kme_a_cpu_s=$(( ($(cpu $pid_a) - idle_a0) / ticks ))" \
  "kme_b_cpu_s=$(( ($(cpu $pid_b) - idle_b0) / ticks )) per ${seconds} s"
phase "closed loop, 16 connections, 1 key" -u /api/v1/keys/sae-b/enc_keys -c 16
phase "closed loop, 64 connections, 1 key" -u /api/v1/keys/sae-b/enc_keys -c 64
phase "open loop 500 requests/s, 1 key" -u /api/v1/keys/sae-b/enc_keys -c 16 -r 500
phase "closed loop, 4 connections, number=100" -u /api/v1/keys/sae-b/enc_keys -c 4 \
  -m POST -b '{"number":100}'
phase "closed loop, 16 connections, number=100" -u /api/v1/keys/sae-b/enc_keys -c 16 \
  -m POST -b '{"number":100}'
phase "closed loop, 64 connections, number=100" -u /api/v1/keys/sae-b/enc_keys -c 64 \
  -m POST -b '{"number":100}'
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
# The machine's speed varies by more than 2x between sittings: measure the yardstick
# (bench_machine_yardstick.sh) right after, with both KMEs stopped, so that the figures
# above can be read as ratios to it (YARDSTICK=0 skips it).
if [ "${YARDSTICK:-1}" != 0 ]; then
  kill -TERM "$pid_a" "$pid_b" 2>/dev/null || true
  wait "$pid_a" "$pid_b" 2>/dev/null || true
  pid_a="" pid_b=""
  bash benchmarks/bench_machine_yardstick.sh "$seconds" | tail -n +2 | tee "$tmp/yardstick.txt"
  # Issue 7's targets, read against the yardstick: each phase's share of the bare hello
  # at 64 connections, and what that share means on the machine the issue was filed on
  # (9,000-14,000 hello requests/s there).
  "$py" - "$tmp/phases.txt" "$tmp/yardstick.txt" <<'PYEOF'
import json, sys

def rps(path, label):
    for line in open(path):
        if line.startswith(label):
            return json.loads(line.split(" | ")[1])["rps"]
    return None

hello = rps(sys.argv[2], "bare mutual-TLS hello, closed loop, 64 connections")
for label, keys, target in (("closed loop, 64 connections, 1 key", 1, 2_000),
                            ("closed loop, 64 connections, number=100", 100, 100_000)):
    served = rps(sys.argv[1], label)
    if hello and served:
        share = served / hello
        low, high = share * 9_000 * keys, share * 14_000 * keys
        verdict = ("met" if low >= target else "not met" if high < target
                   else "met at the fast end only")
        print(f"target ({label}): {share:.2%} of the yardstick; at the filing-time "
              f"machine {low:,.0f}-{high:,.0f} keys/s against >= {target:,}: {verdict}")
PYEOF
fi
