#!/usr/bin/env python3
"""Relay CPU per join: origin, relay (pinned to core 0, one QUIC thread) and a looped
publisher; `quicast loadgen` on core 1 joins N listeners over RAMP seconds. The relay's CPU
(schedstat, ns) from the first join to the last listener's first audio, less serving meanwhile
(the steady per-listener rate measured after, times the audience's integral over that window),
divided by N. Also the UDP datagrams (all processes) per join.

    python3 benches/joins.py [N] [RAMP]      # default 3000 listeners over 1 s
    QUICAST_BENCH_RELAY_BIN=/path/to/other/quicast python3 benches/joins.py   # A/B a build
"""
import hashlib, json, os, re, subprocess, sys, threading, time

n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
ramp = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("QUICAST_BENCH_RELAY_BIN", f"{ROOT}/target/release/quicast")
MAIN = f"{ROOT}/target/release/quicast"
work = f"{ROOT}/target/joins"
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
def spawn(args, cpu=None, env_log="warn,quicast::server=info"):
    cmd = (["taskset", "-c", cpu] if cpu else []) + args
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "RUST_LOG": env_log})
def addr_of(p):
    while True:
        l = p.stderr.readline()
        if not l: raise SystemExit("no addr")
        m = re.search(r"addr=(\S+)", l)
        if m and "listening" in l: return m.group(1)
def cpu_ns(pid):
    tot = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try: tot += int(open(f"/proc/{pid}/task/{t}/schedstat").read().split()[0])
        except Exception: pass
    return tot
o = spawn([MAIN, "origin", "--listen", "127.0.0.1:0", "--cert", cert, "--key", key], cpu="1")
oa = addr_of(o)
r = spawn([BIN, "relay", "--listen", "127.0.0.1:0", "--upstream", f"quic://{oa}", "--fingerprint", fp, "--cert", cert, "--key", key, "--quic-threads", "1"], cpu="0")
ra = addr_of(r)
p = spawn([MAIN, "publish", f"quic://{oa}/bench", "--input", f"{src}", "--loop", "--fingerprint", fp], cpu="1")
time.sleep(2)
# drain stderr pipes in background
for proc in (o, r, p):
    threading.Thread(target=lambda pr=proc: [None for _ in pr.stderr], daemon=True).start()
dur = ramp + 6
lg = subprocess.Popen(["taskset","-c","1",MAIN,"loadgen",f"quic://{ra}/bench","--listeners",str(n),"--duration",str(dur),"--ramp",str(ramp),"--fingerprint",fp,"--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ,"RUST_LOG":"error,quicast::cli::loadgen=info"})
def udp():
    lines=[l.split() for l in open("/proc/net/snmp") if l.startswith("Udp:")]
    d=dict(zip(lines[0],lines[1])); return int(d["OutDatagrams"])
u0=udp()
t0 = time.time(); c0 = cpu_ns(r.pid)
joined = None
for l in lg.stderr:
    if "every listener has joined" in l:
        t1 = time.time(); c1 = cpu_ns(r.pid); u1=udp(); break
time.sleep(1.0)
s0, w0 = cpu_ns(r.pid), time.time()
time.sleep(3.0)
s1, w1 = cpu_ns(r.pid), time.time()
out = lg.communicate()[0]
rep = json.loads(out.strip().splitlines()[-1])
steady_per_listener = (s1 - s0) / (w1 - w0) / n  # ns per second per listener
join_window = t1 - t0
# audience integral: linear ramp to n over `ramp`, then n until t1
if join_window <= ramp:
    integral = n * join_window**2 / (2*ramp) if ramp > 0 else n*join_window
else:
    integral = n * ramp / 2 + n * (join_window - ramp)
serving = steady_per_listener * integral
join_ns = ((c1 - c0) - serving) / n
print(f"n={n} ramp={ramp} window={join_window:.2f}s relay_cpu_join_window={(c1-c0)/1e9:.3f}s serving_est={serving/1e9:.3f}s steady={(s1-s0)/(w1-w0)/1e7:.1f}% join={join_ns/1000:.0f}us dgrams/join={(u1-u0)/n:.1f} connected={rep['connected']} failed={rep['failed']} join_p99={rep['join_ms']['p99']}")
for proc in (o, r, p): proc.kill()
