"""A shared tier for the artifact store: any fsspec URL (``s3://``, ``gs://``, ``file://``, ...).

:class:`RemoteStore` is a :class:`~entangle.store.Store` whose local ``root`` is a working cache
and whose ``remote`` URL is shared between machines. Every read is served locally (memory-mapped
as before): an entry that only the remote holds is first downloaded into the local ``tmp/``,
every file checked against the checksums in its ``meta.json``, and published with the local
store's atomic rename, so a half or corrupt download is never visible. ``put`` publishes locally,
then uploads the entry with ``meta.json`` last: a remote entry without ``meta.json`` is
incomplete and invisible.

Remote layout, under the URL::

    objects/<k[:2]>/<key>/meta.json            the commit marker, byte-identical to the local one
    objects/<k[:2]>/<key>/<digest>/<file>      the entry's files; <digest> hashes their checksums

The files of an entry live in a folder named by the digest of their checksums, so two machines
that fit the same key at once (with bytes that differ, e.g. a timestamp in a saved state) never
overwrite each other's files: whichever ``meta.json`` lands last names a complete set. Needs
``pip install 'entangle[remote]'`` plus the fsspec backend of the protocol (s3fs, gcsfs, ...).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from typing import Any, Iterator, Mapping

from entangle.store import (Store, StoreError, _file_sha, check_key, check_name, entry_digest,
                            meta_checksum)

log = logging.getLogger(__name__)


def open_remote(url: str):
    """``(filesystem, path)`` for an fsspec URL; :class:`StoreError` naming the URL if it cannot open."""
    try:
        from fsspec.core import url_to_fs
    except ImportError as err:
        raise StoreError(f"store.remote={url!r} needs fsspec: pip install 'entangle[remote]'") from err
    try:
        fs, path = url_to_fs(url)
    except Exception as err:  # unknown protocol, missing backend (s3fs, gcsfs), bad options
        raise StoreError(f"cannot open store.remote={url!r}: {type(err).__name__}: {err}") from err
    return fs, path.rstrip("/")


class RemoteStore(Store):
    """A local store (``root``, the cache every read goes through) backed by a shared fsspec URL."""

    def __init__(self, root: str | os.PathLike | None, remote: str):
        super().__init__(root)
        self.remote = str(remote)
        self.fs, self._base = open_remote(self.remote)

    def reopen_args(self) -> tuple:
        """Local root and remote URL: a pool worker reopens the same two tiers."""
        return (str(self.root), self.remote)

    def __repr__(self) -> str:
        return f"RemoteStore({str(self.root)!r}, {self.remote!r})"

    # -- remote paths ---------------------------------------------------------------------------
    def remote_path(self, key: str) -> str:
        check_key(key)
        return f"{self._base}/objects/{key[:2]}/{key}"

    def _where(self, key: str) -> str:
        return f"store entry {key[:12]} in {self.remote}"

    # -- queries --------------------------------------------------------------------------------
    def has(self, key: str) -> bool:
        return super().has(key) or self.fs.exists(f"{self.remote_path(key)}/meta.json")

    def keys(self) -> Iterator[str]:
        remote = set()
        for path in self.fs.glob(f"{self._base}/objects/*/*/meta.json"):
            key = path.rstrip("/").split("/")[-2]
            try:
                remote.add(check_key(key))
            except StoreError:  # a stray folder: not an entry
                continue
        return iter(sorted(set(super().keys()) | remote))

    # -- reading: download first, then the local store reads -------------------------------------
    def meta(self, key: str) -> dict[str, Any]:
        self.fetch(key)
        return super().meta(key)

    def state(self, key: str) -> dict[str, Any]:
        self.fetch(key)
        return super().state(key)

    def array(self, key: str, name: str, mmap: bool = True) -> Any:
        self.fetch(key)
        return super().array(key, name, mmap)

    def arrays(self, key: str, prefix: str, mmap: bool = True) -> dict[str, Any]:
        self.fetch(key)
        return super().arrays(key, prefix, mmap)

    def verify(self, key: str) -> list[str]:
        """Re-hash the local copy (downloaded first if only the remote holds it)."""
        try:
            self.fetch(key)
        except (KeyError, StoreError) as err:
            return [f"{key[:12]}: {err}"]
        return super().verify(key)

    def fetch(self, key: str) -> bool:
        """Download a remote-only entry into the local store; False when it was already local.

        Raises ``KeyError`` when neither holds the key, :class:`StoreError` when a remote file is
        missing or does not match its checksum (nothing is published locally then).
        """
        if super().has(key):
            return False
        rdir = self.remote_path(key)
        try:
            raw = self.fs.cat_file(f"{rdir}/meta.json")
        except FileNotFoundError as err:
            raise KeyError(key) from err
        try:
            meta = json.loads(raw)
        except ValueError as err:
            raise StoreError(f"{self._where(key)}: corrupt meta.json: {err}") from err
        if not isinstance(meta, dict) or meta.get("key") != key:
            raise StoreError(f"{self._where(key)}: meta.json does not describe this entry")
        if meta.get("checksum") != meta_checksum(meta):
            raise StoreError(f"{self._where(key)}: meta.json does not match its checksum")
        files = meta.get("files", {})
        for rel in files:  # the remote is shared: its file names must not escape the entry
            for part in rel.split("/"):
                check_name(part, f"file name in {self._where(key)}")
        self._ensure_writable()
        tmp = self.root / "tmp" / f"{key}.{uuid.uuid4().hex}"
        try:
            tmp.mkdir(parents=True)
            src = f"{rdir}/{entry_digest(meta)}"
            for rel, sha in files.items():
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    self.fs.get_file(f"{src}/{rel}", str(target))
                except FileNotFoundError as err:
                    raise StoreError(f"{self._where(key)} lacks {rel}") from err
                if _file_sha(target) != sha:
                    raise StoreError(f"{self._where(key)}: {rel} does not match its checksum "
                                     "(corrupt upload?); remove the entry to refit it")
            (tmp / "meta.json").write_bytes(raw)
            published = self._publish(tmp, key)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("downloaded %s", self._where(key))
        return published

    # -- writing --------------------------------------------------------------------------------
    def put(self, key: str, *, meta: Mapping[str, Any], state: Mapping[str, Any] | None = None,
            arrays: Mapping[str, Any] | None = None) -> bool:
        """Publish locally, then upload; True when this call published the entry somewhere."""
        local = super().put(key, meta=meta, state=state, arrays=arrays)
        return self.push(key) or local

    def push(self, key: str) -> bool:
        """Upload the local entry ``key`` unless the remote has it (same key, same content)."""
        rdir = self.remote_path(key)
        if self.fs.exists(f"{rdir}/meta.json"):
            return False
        folder = self.path(key)
        meta = super().meta(key)
        dst = f"{rdir}/{entry_digest(meta)}"
        try:
            files = sorted(meta.get("files", {}))
            for parent in sorted({f"{dst}/{rel}".rsplit("/", 1)[0] for rel in files}):
                self.fs.makedirs(parent, exist_ok=True)
            for rel in files:
                self.fs.put_file(str(folder / rel), f"{dst}/{rel}")
            # meta.json last, under a temporary name then moved: the commit marker appears whole
            staged = f"{rdir}/.meta.json.{uuid.uuid4().hex}"
            self.fs.pipe_file(staged, (folder / "meta.json").read_bytes())
            self.fs.mv(staged, f"{rdir}/meta.json")
        except (OSError, ValueError) as err:
            raise StoreError(f"could not upload store entry {key[:12]} to {self.remote} "
                             f"(it is kept locally in {self.root}): {err}") from err
        log.info("uploaded %s", self._where(key))
        return True

    # -- maintenance ----------------------------------------------------------------------------
    def remove(self, key: str) -> None:
        """Delete the entry locally and remotely (remote ``meta.json`` first: it goes invisible)."""
        super().remove(key)
        rdir = self.remote_path(key)
        for path, recursive in ((f"{rdir}/meta.json", False), (rdir, True)):
            try:
                self.fs.rm(path, recursive=recursive)
            except FileNotFoundError:
                pass
