"""``entangle store``: list, size, verify and prune the artifact store."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from entangle.store import Store


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (1 when ``verify`` finds problems)."""
    parser = argparse.ArgumentParser(prog="entangle store", description=__doc__)
    parser.add_argument("action", choices=["list", "size", "verify", "prune"])
    parser.add_argument("--root", default=None, help="store root (default: ENTANGLE_STORE or ~/.cache/entangle)")
    parser.add_argument("--node", default=None, help="only entries of this node name")
    parser.add_argument("--older-than-days", type=float, default=None, help="prune: entries older than this")
    parser.add_argument("--dry-run", action="store_true", help="prune: list what would go")
    args = parser.parse_args(argv)
    import os
    store = Store(args.root or os.environ.get("ENTANGLE_STORE"))
    now = time.time()
    selected = []
    for key in store.keys():
        meta = store.meta(key)
        if args.node and meta.get("node") != args.node:
            continue
        selected.append((key, meta))
    if args.action == "list":
        for key, meta in selected:
            age_h = (now - meta.get("created", now)) / 3600
            print(f"{key[:16]}  {meta.get('node', '?'):<16} seed={meta.get('seed')!s:<4} "
                  f"{meta.get('class', '?')}  {age_h:.1f} h")
        print(f"{len(selected)} entries in {store.root}")
    elif args.action == "size":
        total = sum(_size(store.path(k)) for k, _ in selected)
        print(f"{len(selected)} entries, {_human(total)} in {store.root}")
    elif args.action == "verify":
        problems = [p for k, _ in selected for p in store.verify(k)]
        for p in problems:
            print(p)
        print(f"verified {len(selected)} entries: {len(problems)} problem(s)")
        return 1 if problems else 0
    elif args.action == "prune":
        if args.older_than_days is None and args.node is None:
            parser.error("prune needs --older-than-days and/or --node")
        cutoff = now - 86400 * (args.older_than_days or 0)
        gone = [(k, m) for k, m in selected if m.get("created", now) <= cutoff]
        for key, meta in gone:
            if args.dry_run:
                print(f"would remove {key[:16]} ({meta.get('node')})")
            else:
                store.remove(key)
        removed_tmp = 0 if args.dry_run else store.clean_tmp()
        print(f"{'would remove' if args.dry_run else 'removed'} {len(gone)} entries"
              f"{f' and {removed_tmp} leftovers of killed writers' if removed_tmp else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
