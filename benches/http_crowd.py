#!/usr/bin/env python3
"""An HTTP crowd at one relay core (the load generator's HTTP mode): N `GET /STREAM.ogg` (or playlists) opened within RAMP
seconds, each reading the stream for HOLD seconds. Reports how many were served, the time to
the first body byte (p50/p99/max), the bytes each got, and the relay's CPU meanwhile.

    python3 benches/http_crowd.py [N] [RAMP] [HOLD] [ogg|m3u8]

Origin, relay (pinned to core 0) and publisher are this build's release binary
(`cargo build --release` first; QUICAST_BENCH_RELAY_BIN for another relay build); the crowd
is `quicast loadgen http://...` on core 1."""
import hashlib, os, re, resource, subprocess, sys, time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
RAMP = float(sys.argv[2]) if len(sys.argv) > 2 else 2.0
HOLD = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
KIND = sys.argv[4] if len(sys.argv) > 4 else "ogg"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("QUICAST_BENCH_RELAY_BIN", f"{ROOT}/target/release/quicast")
MAIN = f"{ROOT}/target/release/quicast"
work = f"{ROOT}/target/http_crowd"
os.makedirs(work, exist_ok=True)
cert, key = f"{work}/c.pem", f"{work}/k.pem"
if not os.path.exists(cert):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
src = f"{work}/talk64k.opus"
if not os.path.exists(src):
    subprocess.run(["ffmpeg", "-hide_banner", "-v", "error", "-y", "-f", "lavfi", "-i", "sine=frequency=300:duration=20",
                    "-c:a", "libopus", "-b:a", "64k", "-vbr", "off", src], check=True)
der = subprocess.run(["openssl", "x509", "-in", cert, "-outform", "DER"], capture_output=True).stdout
fp = hashlib.sha256(der).hexdigest()
resource.setrlimit(resource.RLIMIT_NOFILE, (N + 1000, max(N + 1000, resource.getrlimit(resource.RLIMIT_NOFILE)[1])))

def spawn(args, cpu):
    return subprocess.Popen(["taskset", "-c", cpu] + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RUST_LOG": "warn,quicast::server=info"})

def addr(p, what):
    while True:
        l = p.stderr.readline()
        if not l:
            raise SystemExit(f"no {what} address")
        if f"listening ({what})" in l:
            return re.search(r"addr=(\S+)", l).group(1)

def cpu_ns(pid):
    t = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            t += int(open(f"/proc/{pid}/task/{tid}/schedstat").read().split()[0])
        except OSError:
            pass
    return t

o = spawn([MAIN, "origin", "--listen", "127.0.0.1:0", "--cert", cert, "--key", key], "1")
oa = addr(o, "QUIC")
r = spawn([BIN, "relay", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--upstream", f"quic://{oa}",
           "--fingerprint", fp, "--cert", cert, "--key", key], "0")
ha = addr(r, "HTTP")
p = spawn([MAIN, "publish", f"quic://{oa}/bench", "--input", src, "--loop", "--fingerprint", fp], "1")
import threading
for proc in (o, r, p):
    threading.Thread(target=lambda pr=proc: [None for _ in pr.stderr], daemon=True).start()
host, port = ha.rsplit(":", 1)
path = "/bench.ogg" if KIND == "ogg" else "/bench.m3u8"

time.sleep(1)
# The stream reaches the relay with its first request: one, then the crowd.
subprocess.run(["curl", "-s", "-o", "/dev/null", "--max-time", "2", f"http://{ha}{path}"])
time.sleep(1)
c0, w0 = cpu_ns(r.pid), time.monotonic()
try:
    out = subprocess.run(["taskset", "-c", "1", MAIN, "loadgen", f"http://{ha}{path}", "--listeners", str(N),
                          "--ramp", str(RAMP), "--duration", str(HOLD)], capture_output=True, text=True,
                         env={**os.environ, "RUST_LOG": "error"})
    c1, w1 = cpu_ns(r.pid), time.monotonic()
    print(f"{KIND}: {N} requests over {RAMP} s, each read {HOLD} s")
    print(out.stdout.strip() + out.stderr.strip()[-500:])
    print(f"relay CPU {(c1 - c0) / 1e9 / (w1 - w0) * 100:.0f}% of a core over {w1 - w0:.1f} s")
finally:
    for proc in (o, r, p):
        proc.kill()
