"""``entangle store``: list, size, verify (and repair) and prune the artifact store.

The store is ``--root DIR``, else ``$ENTANGLE_STORE``, else the user's cache folder; the folder
in use is printed first. An empty root is refused, and the commands that delete (``prune``,
``verify --repair``) need the root named (``--root`` or ``ENTANGLE_STORE``): they never fall
back to a default another study may be using. No command crashes on a broken entry: ``verify``
reports it, ``list`` and ``size`` mark it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from entangle.store import Store, StoreError, default_root


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _open(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Store:
    """The store the command names; an empty root is an error, a default is said aloud."""
    given = args.root if args.root is not None else os.environ.get("ENTANGLE_STORE")
    destructive = args.action == "prune" or (args.action == "verify" and args.repair)
    if given is None:
        if destructive:
            parser.error(f"{args.action}{' --repair' if args.repair else ''} deletes entries: name the "
                         f"store with --root DIR (or ENTANGLE_STORE); the default is {default_root()}")
        given = str(default_root())
        how = "the default; --root DIR or ENTANGLE_STORE to choose"
    else:
        how = "--root" if args.root is not None else "ENTANGLE_STORE"
    try:
        store = Store(given)
    except StoreError as err:
        parser.error(str(err).replace("store.root", "--root"))
    print(f"store: {store.root} ({how})")
    return store


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (1 when ``verify`` finds problems it did not repair)."""
    parser = argparse.ArgumentParser(prog="entangle store", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["list", "size", "verify", "prune"])
    parser.add_argument("--root", default=None, help="store folder (default: ENTANGLE_STORE, else the "
                                                     "user's cache folder; required by prune and --repair)")
    parser.add_argument("--node", default=None, help="only entries of this node name")
    parser.add_argument("--older-than-days", type=float, default=None, help="prune: entries older than this")
    parser.add_argument("--dry-run", action="store_true", help="prune: list what would go")
    parser.add_argument("--repair", action="store_true",
                        help="verify: remove every broken entry and incomplete folder (the next run refits them)")
    args = parser.parse_args(argv)
    store = _open(args, parser)
    now = time.time()
    if args.action == "verify":
        return _verify(store, args)
    selected, broken = [], []
    # a folder a crashed writer left without meta.json is no entry (keys() skips it), but it is
    # there: marked, as broken entries are
    incomplete = [name for name, path in store.folders() if not (path / "meta.json").is_file()]
    for key in store.keys():
        try:
            meta = store.meta(key)
        except StoreError as err:
            broken.append((key, str(err)))
            continue
        if args.node and meta.get("node") != args.node:
            continue
        selected.append((key, meta))
    if args.action == "list":
        for key, meta in selected:
            age_h = (now - float(meta.get("created", now))) / 3600
            print(f"{key[:16]}  {meta.get('node', '?'):<16} seed={meta.get('seed')!s:<4} "
                  f"{meta.get('class', '?')}  {age_h:.1f} h")
        for key, _ in broken:
            print(f"{key[:16]}  BROKEN (entangle store verify --repair removes it)")
        for name in incomplete:
            print(f"{name[:16]}  INCOMPLETE (no meta.json; entangle store verify --repair removes it)")
        print(f"{len(selected)} entries{f', {len(broken)} broken' if broken else ''}"
              f"{f', {len(incomplete)} incomplete' if incomplete else ''} in {store.root}")
    elif args.action == "size":
        total = sum(_size(store.path(k)) for k, _ in selected)
        left_out = []
        if broken:
            left_out.append(f"{len(broken)} broken entries")
        if incomplete:
            left_out.append(f"{len(incomplete)} incomplete folders")
        note = f" ({' and '.join(left_out)} not counted)" if left_out else ""
        print(f"{len(selected)} entries, {_human(total)} in {store.root}{note}")
    elif args.action == "prune":
        if args.older_than_days is None and args.node is None:
            parser.error("prune needs --older-than-days and/or --node")
        cutoff = now - 86400 * (args.older_than_days or 0)
        gone = [(k, m) for k, m in selected if float(m.get("created", now)) <= cutoff]
        for key, meta in gone:
            if args.dry_run:
                print(f"would remove {key[:16]} ({meta.get('node')})")
            else:
                store.remove(key)
        removed_tmp = 0 if args.dry_run else store.clean_tmp()
        print(f"{'would remove' if args.dry_run else 'removed'} {len(gone)} entries"
              f"{f' and {removed_tmp} leftovers of killed writers' if removed_tmp else ''}")
    return 0


def _verify(store: Store, args: argparse.Namespace) -> int:
    """Check every folder of the store: entries, incomplete folders, stray names."""
    from entangle.store import check_key
    checked, bad = 0, []
    for name, path in store.folders():
        try:
            check_key(name)
        except StoreError:
            bad.append((name, path, f"{name[:16]}: not an entry (a stray folder under objects/)"))
            continue
        if args.node:
            try:
                if store.meta(name).get("node") != args.node:
                    continue
            except (KeyError, StoreError):
                pass
        checked += 1
        for problem in store.verify(name):
            bad.append((name, path, problem))
    for _, _, problem in bad:
        print(problem)
    if args.repair:
        for name in dict.fromkeys(n for n, _, _ in bad):
            path = next(p for n, p, _ in bad if n == name)
            store._discard(path, name)
        removed_tmp = store.clean_tmp()
        print(f"verified {checked} entries: removed {len(set(n for n, _, _ in bad))} broken "
              f"(the next run refits them){f' and {removed_tmp} leftovers of killed writers' if removed_tmp else ''}")
        return 0
    print(f"verified {checked} entries: {len(bad)} problem(s)"
          f"{' (entangle store verify --repair removes them)' if bad else ''}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
