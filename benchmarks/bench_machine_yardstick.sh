#!/usr/bin/env bash
# A yardstick for the machine, to read absolute key-delivery figures against: a bare
# ASGI "hello" on uvicorn + httptools over mutual TLS (Python's ssl, client certificate
# required, the PKI of `corridor pki init`), loaded by the compiled mutual-TLS load
# generator of ../shared/tools (built into a temporary folder, never copied here) at 16
# and 64 connections. Issue 7 measured 9,000-14,000 requests/s this way when it was
# filed; the host's speed varies between sittings by more than 2x, so figures of
# bench_kme_serve.sh compare across sittings only as ratios to this one.
#
#   bash benchmarks/bench_machine_yardstick.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-8}
py=${PYTHON:-.venv/bin/python}
tools=${CORRIDOR_TOOLS:-../shared/tools}
tmp=$(mktemp -d)
trap 'if [ -n "${pid:-}" ]; then kill -TERM "$pid" 2>/dev/null || true; fi
      wait 2>/dev/null || true; rm -rf "$tmp"' EXIT
gcc -O2 -o "$tmp/tlsload" "$tools/tlsload.c" -lssl -lcrypto
"$py" -m corridor pki init --out "$tmp/pki" --kme kme-a --sae sae-a@kme-a > /dev/null
openssl pkcs8 -topk8 -nocrypt -in "$tmp/pki/sae/sae-a/key.pem" -out "$tmp/sae-a-key.pem"
port=$("$py" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
cat > "$tmp/hello.py" <<PYEOF
import ssl
import uvicorn

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": b"hello"})

uvicorn.run(app, host="127.0.0.1", port=$port, http="httptools", log_level="warning",
            access_log=False, ssl_certfile="$tmp/pki/kme/kme-a/cert.pem",
            ssl_keyfile="$tmp/pki/kme/kme-a/key.pem", ssl_ca_certs="$tmp/pki/ca.pem",
            ssl_cert_reqs=ssl.CERT_REQUIRED)
PYEOF
"$py" "$tmp/hello.py" > "$tmp/server.log" 2>&1 &
pid=$!
for _ in $(seq 1 50); do
  "$py" -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1',$port)))" && break
  sleep 0.2
done
echo "date: $(date -u +%FT%TZ)  load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for conns in 16 64; do
  out=$("$tmp/tlsload" -p "$port" -u / -c "$conns" -d "$seconds" -w 2 \
    --cert "$tmp/pki/sae/sae-a/cert.pem" --key "$tmp/sae-a-key.pem" --ca "$tmp/pki/ca.pem")
  echo "bare mutual-TLS hello, closed loop, $conns connections | $out"
done
