#!/usr/bin/env python3
"""Prints the table of docs/limits.md: every named limit of the workspace (a `const` whose name
ends in a unit or a bound: _MAX, _MIN, _BYTES, _MS, _DEFAULT, _LIMIT, ...), where it is, its value
and its doc comment. Run from the repository root: scripts/limits-table.py > /tmp/t.md"""
import pathlib, re

CRATES = ["auth", "tls", "codec", "batching", "edge", "storage", "raft", "replication", "server", "resp", "cli", "client", "regions", "testkit"]
NAME = re.compile(r"^\s*(?:pub(?:\(crate\))?\s+)?const\s+([A-Z][A-Z0-9_]*)\s*:\s*([^=]+)=\s*(.+?);\s*$")
LIMITISH = re.compile(r"(_MAX|_MIN|_BYTES|_MS|_S|_DEFAULT|_LIMIT|_ENTRIES|_BUDGET|_TIMEOUT|_EVERY|_PAGE|_BUFFER|_WINDOW|_STEP|_SAMPLES|_ITEMS|_RECORDS|_KEYS|^WINDOW|^HEARTBEAT|^BACKOFF|DEADLINE|_PAUSE|_POLL|_MARGIN|_AFTER|_CHECK|BUDGET|LIMITS$|_SPAN|ATTEMPTS|_FIRST|_RESERVED|^TCP_KEEPALIVE_)")
SKIP_FILES = re.compile(r"(tests?_[a-z_]*\.rs|_tests\.rs|/tests\.rs|sim_file_system\.rs)$")

rows = []
for crate in CRATES:
    for path in sorted(pathlib.Path(crate, "src").rglob("*.rs")):
        if SKIP_FILES.search(str(path)):
            continue
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            m = NAME.match(line)
            # A unit conversion (NANOS_PER_MS) is not a limit; a bound per thing (X_PER_Y_MAX) is.
            if not m or not LIMITISH.search(m.group(1)) or re.fullmatch(r"[A-Z]+_PER_[A-Z]+", m.group(1)):
                continue
            if m.group(3).lstrip().startswith(('b"', '"')):
                continue  # a key or a name, not a limit
            doc = []
            j = i - 1
            while j >= 0 and lines[j].strip().startswith("//") and not lines[j].strip().startswith("//!"):
                doc.insert(0, lines[j].strip().lstrip("/").strip())
                j -= 1
            text = " ".join(doc).replace("|", "\\|") or "(no doc comment)"
            value = m.group(3).strip().replace("|", "\\|")
            rows.append((crate, f"`{m.group(1)}`", f"`{value}`", f"`{path}:{i + 1}`", text))

print("| crate | limit | value | where | what it bounds, and what happens at it |")
print("|---|---|---|---|---|")
for row in rows:
    print("| " + " | ".join(row) + " |")
