#!/usr/bin/env python3
"""Every repository path the READMEs name exists: backticked `src/...`, `tests/...`,
`config/...`, `benches/...`, `proto/...`, `fuzz/...`, `vendor/...` paths, relative link
targets, and the source map's files (a `src/DIR/` line, then the names of its files).
A backticked path that leaves the repository (`../...`) is refused.

    python3 .ci/doc-paths.py README.md benches/README.md
"""
import glob
import os
import re
import sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
bad = 0


def fail(msg):
    global bad
    print(msg)
    bad += 1


for md in sys.argv[1:] or ["README.md", "benches/README.md"]:
    text = open(os.path.join(root, md)).read()
    base = os.path.dirname(md)
    paths = set()
    for m in re.finditer(r"`([^`\n]*(?<!\.)\.\./[^`\n]*)`", text):
        fail(f"{md}: `{m.group(1)}` points outside the repository")
    for m in re.finditer(r"`((?:src|tests|config|benches|proto|fuzz|vendor|\.ci)/[^`\s#]*)`", text):
        paths.add(m.group(1))
    for m in re.finditer(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in m.group(1):
            paths.add(os.path.normpath(os.path.join(base, m.group(1))))
    cur = None
    for line in text.splitlines():
        m = re.match(r"^(src/[\w./]*)\s", line)
        if m:
            cur = m.group(1) if m.group(1).endswith("/") else None
            paths.add(m.group(1))
        if cur:
            for f in re.findall(r"\b((?:\w+/)?\w+\.rs)\b", line):
                dirs = [cur, "src"] + glob.glob(os.path.join(root, cur, "*/"))
                if not any(os.path.exists(os.path.join(root, c, f)) for c in dirs):
                    fail(f"{md}: source map: {cur}{f} missing")
            for d in re.findall(r"\b(\w+)/ \(", line):
                if not os.path.isdir(os.path.join(root, cur, d)):
                    fail(f"{md}: source map: {cur}{d}/ missing")
    for p in sorted(paths):
        q = p.rstrip("/")
        if "*" in q or "<" in q:
            if not glob.glob(os.path.join(root, re.sub(r"<[^>]*>", "*", q))):
                fail(f"{md}: {p} matches nothing")
        elif not os.path.exists(os.path.join(root, q)):
            fail(f"{md}: {p} missing")
sys.exit(1 if bad else 0)
