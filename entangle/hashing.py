"""Fingerprints of node specs, code and data for the store's cache keys.

Values are fingerprinted by type with :func:`functools.singledispatch`; arrays hash dtype and
shape with their bytes; an unknown type raises :class:`UnhashableError` instead of hashing to a
constant, which would silently serve one cached result for different specs.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
from pathlib import Path
from typing import Any

import numpy as np


class UnhashableError(TypeError):
    """A parameter value has no fingerprint; the message names its type (and path in the spec)."""


def digest(text: str | bytes) -> str:
    """Hex SHA-256 of text or bytes."""
    if isinstance(text, str):
        text = text.encode()
    return hashlib.sha256(text).hexdigest()


@functools.singledispatch
def fingerprint(value: Any) -> Any:
    """A JSON-able canonical form of ``value`` whose hash identifies it."""
    if isinstance(value, type):
        return {"__type__": qualname(value), "code": code_version(value)}
    # Objects following the node protocol or scikit-learn's: class + params.
    if hasattr(value, "get_params") and callable(value.get_params):
        try:
            params = value.get_params(deep=False)
        except TypeError:
            params = value.get_params()
        return {"__class__": qualname(type(value)),
                "params": {k: fingerprint(v) for k, v in sorted(params.items())}}
    if callable(value) and hasattr(value, "__qualname__"):
        return {"__callable__": qualname(value), "code": source_hash(value)}
    raise UnhashableError(
        f"cannot fingerprint a value of type {type(value).__module__}.{type(value).__qualname__}; "
        "give it get_params(), or register it with entangle.hashing.fingerprint.register")


@fingerprint.register(type(None))
@fingerprint.register(bool)
@fingerprint.register(int)
@fingerprint.register(str)
def _(value):
    return value


@fingerprint.register(float)
def _(value: float):
    if math.isnan(value):
        return {"__float__": "nan"}
    if math.isinf(value):
        return {"__float__": "inf" if value > 0 else "-inf"}
    return value


@fingerprint.register(np.generic)
def _(value: np.generic):
    return fingerprint(value.item())


@fingerprint.register(list)
@fingerprint.register(tuple)
def _(value):
    return [fingerprint(v) for v in value]


@fingerprint.register(dict)
def _(value: dict):
    return {str(k): fingerprint(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}


@fingerprint.register(np.ndarray)
def _(value: np.ndarray):
    arr = np.ascontiguousarray(value)
    if arr.dtype == object:
        raise UnhashableError("cannot fingerprint an object array")
    return {"__ndarray__": digest(arr.tobytes()), "dtype": str(arr.dtype), "shape": list(arr.shape)}


@fingerprint.register(Path)
def _(value: Path):
    return {"__path__": str(value)}


@fingerprint.register(functools.partial)
def _(value: functools.partial):
    return {"__partial__": fingerprint(value.func), "args": fingerprint(list(value.args)),
            "kwargs": fingerprint(dict(value.keywords))}


def _register_optional() -> None:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - hydra is a dependency
        return

    @fingerprint.register(DictConfig)
    @fingerprint.register(ListConfig)
    def _(value):
        return fingerprint(OmegaConf.to_container(value, resolve=True))


_register_optional()


def qualname(obj: Any) -> str:
    """``module.QualName`` of a class or function."""
    return f"{obj.__module__}.{obj.__qualname__}"


@functools.lru_cache(maxsize=None)
def source_hash(obj: Any) -> str:
    """Hash of an object's source code (a function's or class's), or its qualname if unavailable."""
    try:
        return digest(inspect.getsource(obj))[:16]
    except (OSError, TypeError):
        return digest(qualname(obj))[:16]


def code_version(cls: type) -> str:
    """Code version of a node class: its explicit ``version`` plus a hash of its (and its bases') source.

    Including the source means editing a model's code never serves stale results; the explicit
    version lets a user force a new key when behaviour changes outside the class.
    """
    parts = []
    for klass in cls.__mro__:
        if klass.__module__ in ("builtins", "abc", "typing"):
            continue
        parts.append(f"{qualname(klass)}:{source_hash(klass)}")
    explicit = getattr(cls, "version", None)
    return digest(json.dumps({"version": explicit, "sources": parts}))[:16]


def key_of(payload: Any) -> str:
    """The cache key of a JSON-able payload (sorted keys, compact)."""
    return digest(json.dumps(payload, sort_keys=True, separators=(",", ":")))
