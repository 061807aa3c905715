#!/usr/bin/env python3
"""What strangers cost a node (issue 23's probes, after the fix): an origin (release build,
pinned to core 0) with HTTP, admin, a source password and a looped publisher; each probe
reports what the node answered and what it cost (log bytes, memory, CPU).

    python3 benches/front_door.py        # cargo build --release first
"""
import hashlib, os, re, socket, subprocess, sys, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("QUICAST_BENCH_BIN", f"{ROOT}/target/release/quicast")
work = f"{ROOT}/target/front_door"
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
fp = hashlib.sha256(subprocess.run(["openssl", "x509", "-in", cert, "-outform", "DER"], capture_output=True).stdout).hexdigest()
import resource
resource.setrlimit(resource.RLIMIT_NOFILE, (20000, max(20000, resource.getrlimit(resource.RLIMIT_NOFILE)[1])))

log = open(f"{work}/origin.log", "w+")
o = subprocess.Popen(["taskset", "-c", "0", BIN, "origin", "--listen", "127.0.0.1:0", "--cert", cert, "--key", key,
                      "--http", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--source-password", "hunter22",
                      "--max-connections", "1500"], stdout=subprocess.DEVNULL, stderr=log,
                     env={**os.environ, "RUST_LOG": "info"})
def logged(what):
    while True:
        log.seek(0)
        m = re.search(rf"listening \({what}\).*?addr=(\S+)", log.read())
        if m:
            return m.group(1)
        time.sleep(0.05)
qa, ha, aa = logged("QUIC"), logged("HTTP"), logged("admin")
pub = subprocess.Popen(["taskset", "-c", "1", BIN, "publish", f"quic://{qa}/live", "--input", src, "--loop",
                        "--fingerprint", fp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
host, port = ha.rsplit(":", 1)
port = int(port)

def log_bytes():
    return os.path.getsize(f"{work}/origin.log")
def rss_mib():
    for l in open(f"/proc/{o.pid}/status"):
        if l.startswith("VmRSS"):
            return int(l.split()[1]) / 1024
def cpu_s():
    return sum(int(open(f"/proc/{o.pid}/task/{t}/schedstat").read().split()[0]) for t in os.listdir(f"/proc/{o.pid}/task")) / 1e9
def metric(name):
    out = subprocess.run(["curl", "-s", f"http://{aa}/metrics"], capture_output=True, text=True).stdout
    return sum(float(l.rsplit(" ", 1)[1]) for l in out.splitlines() if l.startswith(name) and not l.startswith("#"))
def raw(req):
    s = socket.create_connection((host, port))
    s.sendall(req)
    s.shutdown(socket.SHUT_WR)
    out = b""
    s.settimeout(5)
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
    except socket.timeout:
        pass
    s.close()
    return out.split(b" ", 2)[1:2]
time.sleep(2)

# 1. The request that panicked routing, 3,000 times (twice --max-connections).
t0 = time.time()
codes = {}
for _ in range(3000):
    c = raw(b"PUT example.com:80 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    codes[c[0] if c else b"closed"] = codes.get(c[0] if c else b"closed", 0) + 1
print(f"1. 3,000 authority-form PUTs in {time.time() - t0:.1f} s: {codes}; "
      f"http_connections after {metric('quicast_http_connections'):.0f}; "
      f"a new HTTP listener: {subprocess.run(['curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '2', f'http://{ha}/live.ogg'], capture_output=True, text=True).stdout}")

# 2. 9,000 wrong source passwords from one client.
b0 = log_bytes(); t0 = time.time()
codes = {}
import base64
auth = base64.b64encode(b"source:wrong").decode()
for _ in range(9000):
    c = raw(f"PUT /x HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\nContent-Type: audio/ogg\r\nContent-Length: 0\r\n\r\n".encode())
    codes[c[0] if c else b"closed"] = codes.get(c[0] if c else b"closed", 0) + 1
print(f"2. 9,000 wrong source passwords in {time.time() - t0:.1f} s: {codes}; log grew {log_bytes() - b0} bytes")

# 3. 300 HTTP Ogg listeners that never read, 60 s.
r0 = rss_mib()
socks = []
for _ in range(300):
    s = socket.create_connection((host, port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b"GET /live.ogg HTTP/1.1\r\nHost: x\r\n\r\n")
    socks.append(s)
sk0 = metric("quicast_skips_total")
time.sleep(60)
ss = subprocess.run(["ss", "-tn", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True).stdout
sendq = [int(l.split()[1]) for l in ss.splitlines()[1:] if l.split()]
print(f"3. 300 never-reading HTTP listeners, 60 s: Send-Q max {max(sendq) // 1024} KiB, total {sum(sendq) // 1024} KiB; "
      f"RSS {r0:.0f} -> {rss_mib():.0f} MiB; skips {metric('quicast_skips_total') - sk0:.0f}")
for s in socks:
    s.close()

# 6. The admin port while 300 silent connections hold it.
held = [socket.create_connection(tuple(aa.rsplit(":", 1)[:1]) + (int(aa.rsplit(":", 1)[1]),)) for _ in range(300)]
t0 = time.time()
code = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "30", f"http://{aa}/readyz"], capture_output=True, text=True).stdout
print(f"6. /readyz with 300 silent admin connections: {code} in {(time.time() - t0) * 1000:.0f} ms")
for s in held:
    s.close()

# 7. 5,000 connections sending a request head one byte a second... here every 0.2 s, 20 s.
r0, c0 = rss_mib(), cpu_s()
trickle = []
for _ in range(5000):
    s = socket.create_connection((host, port))
    trickle.append(s)
head = b"GET /live.ogg HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
t0 = time.time()
i = 0
while time.time() - t0 < 20:
    for s in trickle:
        try:
            s.send(head[i % len(head):i % len(head) + 1])
        except OSError:
            pass
    i += 1
    time.sleep(0.2)
print(f"7. 5,000 connections trickling a head byte by byte for 20 s: origin CPU {(cpu_s() - c0) / 20 * 100:.0f}% of a core, "
      f"RSS {r0:.0f} -> {rss_mib():.0f} MiB")
for s in trickle:
    s.close()
o.kill(); pub.kill()
