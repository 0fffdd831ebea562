#!/usr/bin/env python3
"""Independent verifier for a guard forensic log (docs/LOG-FORMAT.md), stdlib only.
Usage: verify_log.py DIR... -- prints "DIR: OK" or "DIR: BAD <why>" each; exit 0 only if all OK."""
import hashlib, json, os, re, sys
def gap_names(rec, seq):  # a seq jump only right before a gap naming exactly the missing seqs
    g, s = rec.get("payload"), rec["seq"]
    return rec.get("kind") == "gap" and isinstance(g, dict) and s > seq and g.get("first_seq") == seq and g.get("last_seq") == s - 1 \
        and isinstance(g.get("kinds"), dict) and all(type(n) is int for n in g["kinds"].values()) and sum(g["kinds"].values()) == s - seq
def verify(log_dir):
    names = [n for n in os.listdir(log_dir) if re.fullmatch(r"guard-\d{6,}\.jsonl", n)]
    names.sort(key=lambda n: int(n[6:-6]))
    if not names or [int(n[6:-6]) for n in names] != list(range(len(names))):
        return "files missing: need guard-000000.jsonl onward without gaps"
    seq, prev = 0, "0" * 64
    for i, name in enumerate(names):
        if i < len(names) - 1 and not os.path.getsize(os.path.join(log_dir, name)): return f"{name}: empty but not the newest file"
        with open(os.path.join(log_dir, name), "rb") as f:  # streams: one line in memory
            for no, line in enumerate(f, 1):
                if not line.endswith(b"\n"): return f"{name}:{no}: torn final line (no newline)"
                line = line[:-1]
                if line[-75:] != b',"hash":"' + hashlib.sha256(line[:-75]).hexdigest().encode() + b'"}':
                    return f"{name}:{no}: hash does not match the line"
                try:
                    rec = json.loads(line)
                except ValueError as e:
                    return f"{name}:{no}: not JSON: {e}"
                if type(rec.get("seq")) is not int or (rec["seq"] != seq or rec.get("kind") == "gap") and not gap_names(rec, seq):
                    return f"{name}:{no}: seq {rec.get('seq')!r}, expected {seq} (or a gap record naming exactly the seqs skipped)"
                if rec.get("prev") != prev: return f"{name}:{no}: prev is not the SHA-256 of the previous line"
                if no == 1 and rec.get("kind") != ("start" if rec["seq"] == 0 else "rotate"):
                    return f"{name}:1: a file must begin with start (first file) or rotate"
                seq, prev = rec["seq"] + 1, hashlib.sha256(line).hexdigest()
    return None if seq else "no records"
bad = 0
for log_dir in sys.argv[1:]:
    why = verify(log_dir)
    bad += why is not None
    print(f"{log_dir}: {'OK' if why is None else 'BAD ' + why}")
sys.exit(1 if bad or len(sys.argv) < 2 else 0)
