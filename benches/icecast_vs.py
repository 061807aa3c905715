#!/usr/bin/env python3
"""quicast's HTTP edge beside Icecast (Debian's icecast2), one server core each, the same
ffmpeg Ogg Opus source pushed to both (`-re`, ffmpeg's one-second Ogg pages), N HTTP
listeners each (`quicast loadgen http://...`, the same client for both), quicast with
`--deliver-ms 1000` on origin and edge so that both write each listener once a second.
Interleaved rounds; reports each server's CPU over a steady window and its memory per
listener.

    python3 benches/icecast_vs.py [N] [SECS] [ROUNDS]     # default 3000 listeners, 20 s, 2 rounds

Needs icecast2 (it runs as its own user), ffmpeg, and this build's release binary
(`cargo build --release` first). The servers run on core 0; sources, origin and load on core 1.
"""
import hashlib, os, re, shutil, subprocess, sys, threading, time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
SECS = int(sys.argv[2]) if len(sys.argv) > 2 else 20
ROUNDS = int(sys.argv[3]) if len(sys.argv) > 3 else 2
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("QUICAST_BENCH_RELAY_BIN", f"{ROOT}/target/release/quicast")
MAIN = f"{ROOT}/target/release/quicast"
work = f"{ROOT}/target/icecast_vs"
os.makedirs(work, exist_ok=True)
if shutil.which("icecast2") is None:
    sys.exit("icecast2 is not installed (apt-get install icecast2)")
cert, key = f"{work}/c.pem", f"{work}/k.pem"
if not os.path.exists(cert):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
src = f"{work}/talk64k.opus"
if not os.path.exists(src):
    subprocess.run(["ffmpeg", "-hide_banner", "-v", "error", "-y", "-f", "lavfi", "-i", "sine=frequency=300:duration=60",
                    "-f", "lavfi", "-i", "anoisesrc=color=pink:amplitude=0.1:duration=60", "-filter_complex", "amix=inputs=2",
                    "-c:a", "libopus", "-b:a", "64k", "-vbr", "off", src], check=True)
fp = hashlib.sha256(subprocess.run(["openssl", "x509", "-in", cert, "-outform", "DER"], capture_output=True).stdout).hexdigest()

def cpu_ns(pid):
    t = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            t += int(open(f"/proc/{pid}/task/{tid}/schedstat").read().split()[0])
        except OSError:
            pass
    return t

def rss_kib(pid):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"):
            return int(l.split()[1])
    return 0

def drain(p):
    threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()

def push(url):
    p = subprocess.Popen(["taskset", "-c", "1", "ffmpeg", "-hide_banner", "-v", "error", "-re", "-stream_loop", "-1",
                          "-i", src, "-c", "copy", "-f", "ogg", "-content_type", "audio/ogg", url],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    drain(p)
    return p

def measure(name, server_pid, url):
    time.sleep(3)  # the source is in, the stream warm
    rss0 = rss_kib(server_pid)
    lg = subprocess.Popen(["taskset", "-c", "1", MAIN, "loadgen", url, "--listeners", str(N), "--ramp", "2",
                           "--duration", str(SECS)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "RUST_LOG": "error"})
    time.sleep(7)  # everyone in, a few seconds of serving
    c0, w0 = cpu_ns(server_pid), time.monotonic()
    time.sleep(SECS - 8)
    c1, w1 = cpu_ns(server_pid), time.monotonic()
    rss1 = rss_kib(server_pid)
    out, _ = lg.communicate()
    served = re.search(r"served (\d+)", out)
    each = re.search(r"bytes each p50 (\d+)", out)
    print(f"{name:8} cpu {(c1 - c0) / 1e9 / (w1 - w0) * 100:5.1f}%  rss {rss0 // 1024} -> {rss1 // 1024} MiB "
          f"({(rss1 - rss0) / N:.1f} KiB/listener)  served {served.group(1) if served else '?'}/{N}  "
          f"bytes each {each.group(1) if each else '?'}", flush=True)

def icecast_round():
    port = 18000
    logdir = f"{work}/icelog"
    os.makedirs(logdir, exist_ok=True)
    shutil.chown(logdir, "icecast2", "icecast")
    conf = f"{work}/icecast.xml"
    open(conf, "w").write(f"""<icecast>
  <limits><clients>{N + 100}</clients><sources>2</sources><queue-size>524288</queue-size>
    <client-timeout>30</client-timeout><header-timeout>15</header-timeout><source-timeout>10</source-timeout>
    <burst-on-connect>1</burst-on-connect><burst-size>65535</burst-size></limits>
  <authentication><source-password>hackme</source-password><admin-user>admin</admin-user><admin-password>hackme</admin-password></authentication>
  <hostname>127.0.0.1</hostname>
  <listen-socket><port>{port}</port><bind-address>127.0.0.1</bind-address></listen-socket>
  <fileserve>1</fileserve>
  <paths><basedir>/usr/share/icecast2</basedir><logdir>{logdir}</logdir><webroot>/usr/share/icecast2/web</webroot>
    <adminroot>/usr/share/icecast2/admin</adminroot></paths>
  <logging><accesslog>access.log</accesslog><errorlog>error.log</errorlog><loglevel>2</loglevel></logging>
</icecast>""")
    os.chmod(conf, 0o644)
    ice = subprocess.Popen(["taskset", "-c", "0", "prlimit", f"--nofile={N + 1000}", "setpriv", "--reuid=icecast2",
                            "--regid=icecast", "--init-groups", "icecast2", "-c", conf],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    drain(ice)
    time.sleep(1)
    src_p = push(f"icecast://source:hackme@127.0.0.1:{port}/bench.ogg")
    try:
        measure("icecast", ice.pid, f"http://127.0.0.1:{port}/bench.ogg")
    finally:
        src_p.kill()
        ice.kill()
        ice.wait()

def quicast_round():
    def node(args, cpu):
        p = subprocess.Popen(["taskset", "-c", cpu] + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "RUST_LOG": "warn,quicast::server=info"})
        addrs = {}
        while len(addrs) < 2:
            l = p.stderr.readline()
            if not l:
                sys.exit("a quicast node did not start")
            m = re.search(r"listening \((\w+)\).*?addr=(\S+)", l)
            if m:
                addrs[m.group(1)] = m.group(2)
        drain(p)
        return p, addrs
    origin, oa = node([MAIN, "origin", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--cert", cert, "--key", key,
                       "--source-password", "hackme", "--deliver-ms", "1000"], "1")
    edge, ea = node([BIN, "relay", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--upstream", f"quic://{oa['QUIC']}",
                     "--fingerprint", fp, "--cert", cert, "--key", key, "--deliver-ms", "1000"], "0")
    src_p = push(f"icecast://source:hackme@{oa['HTTP']}/bench")
    try:
        measure("quicast", edge.pid, f"http://{ea['HTTP']}/bench.ogg")
    finally:
        for p in (src_p, edge, origin):
            p.kill()

print(f"{N} HTTP listeners, {SECS} s each, one server core; CPU over the steady window")
for _ in range(ROUNDS):
    icecast_round()
    quicast_round()
