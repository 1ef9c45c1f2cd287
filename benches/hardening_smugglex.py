#!/usr/bin/env python3
"""smugglex's JSON results as Markdown for benches/hardening.sh.

  count FILE           how many of the checks smugglex ran reported the target vulnerable
  findings FILE TITLE  one bullet per vulnerable check: what smugglex sent and why it flagged it

FILE is smugglex's `-o` output (one scan, or a batch envelope with `results`).
"""

import json
import sys


def scans(path):
    try:
        data = json.load(open(path))
    except (OSError, ValueError):
        return None
    found = []

    def walk(node):
        if isinstance(node, dict):
            if "checks" in node and isinstance(node["checks"], list):
                found.append(node)
                return
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(data)
    return found


def count(path):
    s = scans(path)
    if s is None:
        return "no result file (see the run's log)"
    checks = [c for scan in s for c in scan["checks"]]
    errors = [scan["error"] for scan in s if scan.get("error")]
    vulnerable = sum(1 for c in checks if c.get("vulnerable"))
    out = f"{vulnerable} of {len(checks)} checks"
    if errors:
        out += "; error: " + "; ".join(errors)
    return out


def findings(path, title):
    s = scans(path) or []
    vulnerable = [c for scan in s for c in scan["checks"] if c.get("vulnerable")]
    if not vulnerable:
        return
    print(f"Findings of `{title}`:")
    print()
    for c in vulnerable:
        payload = (c.get("payload") or "").replace("\r", "\\r").replace("\n", "\\n")
        if len(payload) > 300:
            payload = payload[:300] + "…"
        print(f"- {c['check_type']} payload {c.get('payload_index')}, confidence {c.get('confidence')}: "
              f"baseline `{c.get('normal_status')}` in {c.get('normal_duration_ms')} ms, attack "
              f"`{c.get('attack_status')}` in {c.get('attack_duration_ms')} ms; signals "
              f"{', '.join(c.get('detection_signals') or []) or '-'}; sent `{payload}`")
    print()


def main():
    if sys.argv[1] == "count":
        print(count(sys.argv[2]))
    else:
        findings(sys.argv[2], sys.argv[3])


if __name__ == "__main__":
    main()
