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
    idx = [int(n[6:-6]) for n in names]
    if not names or idx[0] != 0 or any(b - a > 1 for a, b in zip(idx[1:], idx[2:])):
        return "files missing: need guard-000000.jsonl onward without gaps (after it, one recorded gap)"
    seq, prev, ends, gap = 0, "0" * 64, {}, None  # ends: file index -> (last seq, its hash)
    for i, name in enumerate(names):
        if i < len(names) - 1 and not os.path.getsize(os.path.join(log_dir, name)): return f"{name}: empty but not the newest file"
        with open(os.path.join(log_dir, name), "rb") as f:  # streams: one line in memory
            for no, line in enumerate(f, 1):
                if not line.endswith(b"\n"):
                    return f"{name}:{no}: torn final line (no newline)"
                line = line[:-1]
                if line[-75:] != b',"hash":"' + hashlib.sha256(line[:-75]).hexdigest().encode() + b'"}':
                    return f"{name}:{no}: hash does not match the line"
                try:
                    rec = json.loads(line)
                except ValueError as e:
                    return f"{name}:{no}: not JSON: {e}"
                if no == 1 and rec.get("kind") != ("start" if seq == 0 else "rotate"):
                    return f"{name}:1: a file must begin with start (first file) or rotate"
                if no == 1 and i and idx[i] != idx[i - 1] + 1:  # files removed under the budget
                    if rec["seq"] < seq + idx[i] - idx[i - 1] - 1 or rec["payload"]["prev_file"] != f"guard-{idx[i] - 1:06d}.jsonl":
                        return f"{name}:1: does not continue the missing files"
                    gap, ends[idx[i] - 1] = [idx[i - 1] + 1, idx[i] - 1, seq, False], (rec["seq"] - 1, rec["prev"])
                    seq, prev = rec["seq"], rec["prev"]
                if type(rec.get("seq")) is not int or (rec["seq"] != seq or rec.get("kind") == "gap") and not gap_names(rec, seq):
                    return f"{name}:{no}: seq {rec.get('seq')!r}, expected {seq} (or a gap record naming exactly the seqs skipped)"
                if rec.get("prev") != prev:
                    return f"{name}:{no}: prev is not the SHA-256 of the previous line"
                if rec["kind"] == "dropped":  # must match what the log holds (or must have held)
                    p = rec["payload"]; a, b = int(p["first_file"][6:-6]), int(p["last_file"][6:-6])
                    inside = gap and gap[0] <= b < gap[1] and p["last_seq"] < ends[gap[1]][0]
                    if a < 1 or b >= idx[i] or ends.get(a - 1, (None,))[0] != p["first_seq"] - 1 or not (ends.get(b) == (p["last_seq"], p["head"]) or inside):
                        return f"{name}:{no}: dropped record does not match the log"
                    if gap and a <= gap[0] and b >= gap[1]: gap[3] = True
                seq, prev = rec["seq"] + 1, hashlib.sha256(line).hexdigest()
        ends[idx[i]] = (seq - 1, prev)
    if gap and not gap[3]:
        return f"files {gap[0]}..{gap[1]} are missing and no dropped record names them"
    return None if seq else "no records"
bad = 0
for log_dir in sys.argv[1:]:
    try:
        why = verify(log_dir)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        why = f"malformed record: {e!r}"
    bad += why is not None
    print(f"{log_dir}: {'OK' if why is None else 'BAD ' + why}")
sys.exit(1 if bad or len(sys.argv) < 2 else 0)
