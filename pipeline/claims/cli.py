"""``python -m pipeline.claims check reports/<run>/claims.json``: prints one line per claim and exits
1 when a guarantee failed, 2 when the file cannot be read, 0 otherwise."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .base import FINDING, GUARANTEE, KINDS, PASS, STATUSES


class ClaimsFileError(ValueError):
    """claims.json missing, not JSON, or not the shape write_claims writes."""


def read_claims(path: Path) -> list[dict]:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise ClaimsFileError(f"{path}: cannot read ({err.__class__.__name__}: {err})") from None
    except json.JSONDecodeError as err:
        raise ClaimsFileError(f"{path}: not valid JSON ({err})") from None
    entries = doc.get("claims") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ClaimsFileError(f"{path}: expected an object with a non-empty 'claims' list")
    for e in entries:
        if not (isinstance(e, dict) and e.get("kind") in KINDS and e.get("status") in STATUSES
                and isinstance(e.get("id"), str)):
            raise ClaimsFileError(f"{path}: a claim lacks id, kind (guarantee|finding) or status "
                                  f"({'|'.join(STATUSES)}): {e!r:.120}")
    return entries


def failed_guarantees(entries: list[dict]) -> list[str]:
    """Ids of the guarantees that are not PASS (claims.json entries)."""
    return [e["id"] for e in entries if e["kind"] == GUARANTEE and e["status"] != PASS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.claims",
                                     description="The paper's claims (SPEC.md, \"Paper claims\"), each checked "
                                                 "from the evaluate stage's tidy table.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="print each claim; exit 1 if a guarantee failed, 2 if unreadable")
    check.add_argument("path", type=Path, help="reports/<run>/claims.json")
    args = parser.parse_args(argv)
    try:
        entries = read_claims(args.path)
    except ClaimsFileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for e in entries:
        print(f"{e['id']:<3} {e['kind']:<9} {e['status']}  {e.get('statement', '')}: {e.get('summary', '')}")
    failed = failed_guarantees(entries)
    findings = [e for e in entries if e["kind"] == FINDING]
    print(f"guarantees: {'all PASS' if not failed else 'FAILED ' + ', '.join(failed)}; findings: "
          f"{sum(e['status'] == PASS for e in findings)}/{len(findings)} PASS (reported, not enforced)")
    return 1 if failed else 0
