"""The content-addressed artifact store: one entry per fitted node, seed and inputs.

An entry is a folder ``objects/<k[:2]>/<key>/`` holding ``meta.json`` (spec, metrics, file
checksums), the fitted state (``state.pt`` for torch tensors, loaded with
``weights_only=True``; ``state.npz`` for arrays, loaded without pickle) and the predictions and
per-sample losses of every split as ``.npy`` files (memory-mapped on read, so large outputs
stream from disk). Entries are written into ``tmp/`` and published with one atomic rename, so a
killed run never leaves a half-written entry, and two writers of the same key are both safe.

Every read is checked: ``meta.json`` carries a checksum of itself and of every file, verified
the first time a process reads an entry (:meth:`Store.check`). A failed entry raises
:class:`CorruptEntryError` naming it; the executor then treats it as a miss and refits it, so a
corrupt file is never read into a result. A folder left without ``meta.json`` by a crash is
replaced when the key is next published.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from entangle.hashing import digest
from entangle.node import Ragged

log = logging.getLogger(__name__)

_KEY = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


class StoreError(RuntimeError):
    """The store cannot be used (read-only, full, corrupt entry); the message says which."""


class CorruptEntryError(StoreError):
    """An entry fails its checksums (or cannot be parsed); ``key`` names it. Refit it."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(message)


def default_root() -> Path:
    """The user's cache dir: ``$XDG_CACHE_HOME/entangle`` or ``~/.cache/entangle``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "entangle"


def check_root(root: Any, what: str = "store.root") -> Path:
    """The absolute store root; an empty root (``''``, None, ``null``) is refused, never
    replaced by a default folder another study may be using."""
    if root is None or (isinstance(root, str) and root.strip() in ("", "null", "None")):
        raise StoreError(f"{what} is empty: give the store's folder, e.g. {what}={default_root()} "
                         "(the default) or a folder of this study's own")
    return Path(os.path.abspath(Path(str(root)).expanduser()))


def meta_checksum(meta: Mapping[str, Any]) -> str:
    """The checksum of an entry's ``meta.json`` content (every field but ``checksum`` itself)."""
    body = {k: v for k, v in meta.items() if k != "checksum"}
    return digest(json.dumps(body, sort_keys=True, separators=(",", ":")))

def check_key(key: str) -> str:
    """Reject anything that is not a 64-hex-digit key, so no key can escape the store root."""
    if not isinstance(key, str) or not _KEY.match(key):
        raise StoreError(f"invalid store key {key!r}: expected 64 hex digits")
    return key


def check_name(name: str, what: str = "name") -> str:
    """Reject names that could escape a folder (``..``, ``/``, empty, leading dot)."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise StoreError(f"invalid {what} {name!r}: use letters, digits, '_', '-', '.' "
                         "(no path separators, no '..')")
    return name


@dataclass
class StoreStats:
    """Lookups of fitted nodes in one run: ``hits`` were served, ``misses`` were computed."""

    hits: int = 0
    misses: int = 0
    hit_keys: list[str] = field(default_factory=list)
    miss_keys: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses}


def _file_sha(path: Path) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Store:
    """A content-addressed store of fitted nodes and their predictions under ``root``."""

    def __init__(self, root: str | os.PathLike):
        self.root = check_root(root)
        self.stats = StoreStats()
        self._verified: set[str] = set()   # entries whose files were checked in this process

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def reopen_args(self) -> tuple:
        """Constructor arguments that open this store again in another process (pool workers)."""
        return (str(self.root),)

    # -- paths ------------------------------------------------------------------------------
    def path(self, key: str) -> Path:
        check_key(key)
        return self.root / "objects" / key[:2] / key

    def _ensure_writable(self) -> None:
        try:
            (self.root / "tmp").mkdir(parents=True, exist_ok=True)
            (self.root / "objects").mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"store root {self.root} is not writable: {err}") from err
        if not os.access(self.root / "tmp", os.W_OK):
            raise StoreError(f"store root {self.root} is read-only; choose another with store.root=DIR")

    # -- queries ----------------------------------------------------------------------------
    def has(self, key: str) -> bool:
        return (self.path(key) / "meta.json").is_file()

    def record(self, key: str, hit: bool) -> None:
        """Count one lookup of a fitted node in this run's statistics."""
        if hit:
            self.stats.hits += 1
            self.stats.hit_keys.append(key)
        else:
            self.stats.misses += 1
            self.stats.miss_keys.append(key)

    def meta(self, key: str) -> dict[str, Any]:
        """An entry's ``meta.json``, checked against its own checksum (:class:`CorruptEntryError`)."""
        path = self.path(key) / "meta.json"
        try:
            meta = json.loads(path.read_bytes())
        except FileNotFoundError as err:
            raise KeyError(key) from err
        except (ValueError, UnicodeDecodeError) as err:
            raise CorruptEntryError(key, f"store entry {key[:12]} ({path.parent}): meta.json is not "
                                         f"valid JSON: {err}") from err
        if not isinstance(meta, dict) or meta.get("checksum") != meta_checksum(meta):
            raise CorruptEntryError(key, f"store entry {key[:12]} ({path.parent}): meta.json does not "
                                         "match its checksum")
        return meta

    def check(self, key: str) -> dict[str, Any]:
        """Verify an entry's checksums (files once per process); its meta, or
        :class:`CorruptEntryError` naming the entry and what is wrong."""
        meta = self.meta(key)
        if key not in self._verified:
            problems = self._file_problems(key, meta)
            if problems:
                raise CorruptEntryError(key, f"store entry {key[:12]} of node {meta.get('node', '?')!r} "
                                             f"(seed {meta.get('seed')}) is corrupt: {'; '.join(problems)}")
            self._verified.add(key)
        return meta

    def keys(self) -> Iterator[str]:
        objects = self.root / "objects"
        if not objects.is_dir():
            return iter(())
        return (p.name for p in sorted(objects.glob("??/*")) if (p / "meta.json").is_file())

    # -- writing ----------------------------------------------------------------------------
    def put(self, key: str, *, meta: Mapping[str, Any], state: Mapping[str, Any] | None = None,
            arrays: Mapping[str, Any] | None = None) -> bool:
        """Publish an entry atomically; returns False when another writer published it first.

        ``arrays`` maps names like ``"pred/test/boxes"`` or ``"loss/train"`` to arrays or
        :class:`Ragged`; ``state`` maps names to torch tensors, numpy arrays or scalars.
        """
        check_key(key)
        self._ensure_writable()
        final = self.path(key)
        if (final / "meta.json").is_file():
            return False
        tmp = self.root / "tmp" / f"{key}.{uuid.uuid4().hex}"
        try:
            tmp.mkdir(parents=True)
            files: dict[str, str] = {}
            layout: dict[str, str] = {}
            for name, value in (arrays or {}).items():
                for part in name.split("/"):
                    check_name(part, "array name")
                target = tmp / f"{name}.npy"
                target.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(value, Ragged):
                    np.save(target, np.ascontiguousarray(value.values), allow_pickle=False)
                    np.save(tmp / f"{name}.offsets.npy", np.asarray(value.offsets, dtype=np.int64),
                            allow_pickle=False)
                    layout[name] = "ragged"
                else:
                    arr = np.asarray(value)
                    if arr.dtype == object:
                        raise StoreError(f"array {name!r} has dtype object; store plain arrays or Ragged")
                    np.save(target, arr, allow_pickle=False)
                    layout[name] = "array"
            state_layout = self._write_state(tmp, state or {})
            for path in sorted(tmp.rglob("*")):
                if path.is_file():
                    files[str(path.relative_to(tmp))] = _file_sha(path)
            full_meta = dict(meta)
            full_meta.update({"key": key, "arrays": layout, "state": state_layout, "files": files,
                              "created": time.time()})
            full_meta["checksum"] = meta_checksum(full_meta)
            (tmp / "meta.json").write_text(json.dumps(full_meta, indent=1, sort_keys=True))
            return self._publish(tmp, key)
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StoreError(f"could not write store entry {key[:12]} under {self.root}: {err}") from err
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _publish(self, tmp: Path, key: str) -> bool:
        """Move a complete entry folder ``tmp`` into place atomically; False when another writer
        (or a download) published the key first — same key, same content — and ``tmp`` is dropped."""
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            try:
                os.rename(tmp, final)
                return True
            except OSError:
                if (final / "meta.json").is_file():
                    shutil.rmtree(tmp, ignore_errors=True)
                    return False
                if attempt == 2 or not final.exists():
                    raise
                # a folder without meta.json: what a crash left between the files and the
                # publish; never visible as an entry, so it is moved away and replaced
                log.warning("store entry %s was left incomplete by an interrupted run: replacing it",
                            key[:12])
                self._discard(final, key)
        return True  # pragma: no cover

    @staticmethod
    def _write_state(folder: Path, state: Mapping[str, Any]) -> dict[str, str]:
        import torch
        tensors, arrays, layout = {}, {}, {}
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[name] = value.detach().cpu().contiguous()
                layout[name] = "tensor"
            else:
                arr = np.asarray(value)
                if arr.dtype == object:
                    raise StoreError(f"state entry {name!r} is a {type(value).__name__}: "
                                     "state must be tensors, arrays or scalars (no pickling)")
                arrays[name] = arr
                layout[name] = "array"
        if tensors:
            torch.save(tensors, folder / "state.pt")
        if arrays:
            np.savez(folder / "state.npz", **arrays)
        return layout

    # -- reading ----------------------------------------------------------------------------
    def state(self, key: str) -> dict[str, Any]:
        """The fitted state: tensors loaded with ``weights_only=True``, arrays without pickle."""
        import torch
        folder, meta = self.path(key), self.check(key)
        out: dict[str, Any] = {}
        try:
            if (folder / "state.pt").is_file():
                out.update(torch.load(folder / "state.pt", map_location="cpu", weights_only=True))
            if (folder / "state.npz").is_file():
                with np.load(folder / "state.npz", allow_pickle=False) as data:
                    out.update({k: data[k] for k in data.files})
        except Exception as err:
            raise CorruptEntryError(key, f"store entry {key[:12]} ({folder}): its state cannot be "
                                         f"read: {type(err).__name__}: {err}") from err
        missing = set(meta.get("state", {})) - set(out)
        if missing:
            raise StoreError(f"store entry {folder} lacks state {sorted(missing)}")
        return out

    def array(self, key: str, name: str, mmap: bool = True) -> Any:
        """One stored array or Ragged (memory-mapped unless ``mmap=False``)."""
        folder, meta = self.path(key), self.check(key)
        kind = meta["arrays"].get(name)
        if kind is None:
            raise KeyError(f"store entry {key[:12]} has no array {name!r}")
        mode = "r" if mmap else None
        try:
            values = np.load(folder / f"{name}.npy", mmap_mode=mode, allow_pickle=False)
            if kind == "ragged":
                offsets = np.load(folder / f"{name}.offsets.npy", allow_pickle=False)
                return Ragged(values, offsets)
        except (OSError, ValueError, EOFError) as err:
            raise CorruptEntryError(key, f"store entry {key[:12]} ({folder}): array {name!r} cannot be "
                                         f"read: {type(err).__name__}: {err}") from err
        return values

    def arrays(self, key: str, prefix: str, mmap: bool = True) -> dict[str, Any]:
        """All arrays under ``prefix/`` keyed by the rest of their name."""
        meta = self.check(key)
        plen = len(prefix) + 1
        return {name[plen:]: self.array(key, name, mmap) for name in meta["arrays"]
                if name.startswith(prefix + "/")}

    # -- maintenance ------------------------------------------------------------------------
    def _file_problems(self, key: str, meta: Mapping[str, Any]) -> list[str]:
        folder = self.path(key)
        problems = []
        files = meta.get("files")
        if not isinstance(files, dict) or meta.get("key") != key:
            return ["meta.json does not describe this entry"]
        for rel, sha in files.items():
            path = folder / rel
            if not path.is_file():
                problems.append(f"missing {rel}")
            elif _file_sha(path) != sha:
                problems.append(f"{rel} does not match its checksum")
        return problems

    def verify(self, key: str) -> list[str]:
        """Re-hash an entry's files; returns a list of problems (empty when the entry is sound).

        Never raises for a broken entry: a missing or unparsable ``meta.json`` is a problem too.
        """
        folder = self.path(key)
        if not (folder / "meta.json").is_file():
            return [f"{key[:12]}: no meta.json (left incomplete by an interrupted run)"]
        try:
            meta = self.meta(key)
        except (KeyError, StoreError) as err:
            return [f"{key[:12]}: {err}"]
        return [f"{key[:12]}: {p}" for p in self._file_problems(key, meta)]

    def folders(self) -> Iterator[tuple[str, Path]]:
        """Every folder under ``objects/``, entries or not (for ``verify``): ``(name, path)``."""
        objects = self.root / "objects"
        if not objects.is_dir():
            return iter(())
        return ((p.name, p) for p in sorted(objects.glob("*/*")) if p.is_dir())

    def _discard(self, folder: Path, key: str) -> None:
        """Move ``folder`` out of ``objects/`` atomically, then delete it."""
        trash = self.root / "tmp" / f"trash.{key[:64]}.{uuid.uuid4().hex}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(folder, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def remove(self, key: str) -> None:
        """Delete an entry (rename away first, so readers never see half of it)."""
        folder = self.path(key)
        self._verified.discard(key)
        if folder.is_dir():
            self._discard(folder, key)

    def clean_tmp(self, older_than_s: float = 3600.0) -> int:
        """Remove leftovers of killed writers older than ``older_than_s``; returns how many."""
        tmp = self.root / "tmp"
        if not tmp.is_dir():
            return 0
        removed = 0
        now = time.time()
        for p in tmp.iterdir():
            if now - p.stat().st_mtime > older_than_s:
                shutil.rmtree(p, ignore_errors=True)
                removed += 1
        return removed


def entry_digest(meta: Mapping[str, Any]) -> str:
    """A short content digest of an entry's files (for reports)."""
    return digest(json.dumps(meta.get("files", {}), sort_keys=True))[:12]
