"""Fingerprints of node specs, code and data for the store's cache keys.

Values are fingerprinted by type with :func:`functools.singledispatch`; arrays hash dtype and
shape with their bytes; an unknown type raises :class:`UnhashableError` instead of hashing to a
constant, which would silently serve one cached result for different specs.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import inspect
import json
import math
import os
import sys
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
        return {"__callable__": qualname(value), "code": callable_version(value)}
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


_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _is_docstring(statement: ast.AST) -> bool:
    return (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)
            and isinstance(statement.value.value, str))


def _canonical(node: ast.AST, out: list[str]) -> list[str]:
    """Appends ``node`` as text to ``out``: no docstrings, positions or empty fields (Python
    versions spell those differently, e.g. 3.12's ``type_params=[]``), so keys agree across them."""
    out.append(type(node).__name__ + "(")
    for name in node._fields:
        value = getattr(node, name, None)
        if value is None or value == []:
            continue
        out.append(name + "=")
        if isinstance(value, list):
            if name == "body" and isinstance(node, _DOCUMENTED) and _is_docstring(value[0]):
                value = value[1:] or [ast.Pass()]
            elif name == "values" and isinstance(node, ast.JoinedStr):   # 3.12.0-1 add empty parts
                value = [v for v in value if not (isinstance(v, ast.Constant) and v.value == "")]
            out.append("[")
            for item in value:
                if isinstance(item, ast.AST):
                    _canonical(item, out)
                else:
                    out.append(repr(item))
                out.append(",")
            out.append("]")
        elif isinstance(value, ast.AST):
            _canonical(value, out)
        else:
            out.append(repr(value))   # constants: 1, 1.0 and True stay apart
        out.append(",")
    out.append(")")
    return out


def code_digest(source: str | bytes) -> str:
    """Digest of Python source as it runs: its syntax tree without comments, docstrings and
    layout, so editing those keeps every key; the raw text's digest if it does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return digest(source)[:16]
    return _tree_digest(tree)


def _tree_digest(tree: ast.AST) -> str:
    return digest("".join(_canonical(tree, [])))[:16]


@functools.lru_cache(maxsize=None)
def source_hash(obj: Any) -> str:
    """Hash of an object's source code (a function's or class's), or its qualname if unavailable."""
    import textwrap
    try:
        return code_digest(textwrap.dedent(inspect.getsource(obj)))
    except (OSError, TypeError):
        return digest(qualname(obj))[:16]


# -- the code a node runs ---------------------------------------------------------------------
#
# A node's behaviour rarely lives in its class alone: the stereo node runs the network in
# ``models/stereo_net.py``, a user's node calls helpers in the user's own package. A cache key
# that hashed only the class would serve a stale fit after any of those files changed (the
# stale-cache bug of DAG caching tools). So the code version covers the *source files* of every
# module the node's module imports, transitively -- imports inside functions included, found by
# reading the source rather than by importing it -- restricted to the project's own code: the
# node's top-level package, entangle, and any module not installed in site-packages or the
# standard library. Third-party libraries are versioned by their installation, not hashed.
# A file counts by its syntax tree (:func:`code_digest`): editing a comment or a docstring, or
# reformatting, refits nothing. Files are read once per process (lru_cache): a run's keys stay
# consistent even if a file is edited while it runs.

ENTANGLE = "entangle"


@functools.lru_cache(maxsize=None)
def _installed_roots() -> tuple[str, ...]:
    """Folders of the standard library and site-packages (code there is not the project's own)."""
    import site
    import sysconfig
    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    try:
        roots.update(site.getsitepackages())
        roots.add(site.getusersitepackages())
    except AttributeError:  # pragma: no cover - virtualenvs of old Pythons
        pass
    return tuple(sorted(os.path.realpath(r) + os.sep for r in roots if r))


@functools.lru_cache(maxsize=None)
def _module_file(name: str) -> str | None:
    """The ``.py`` file of module ``name``, or None (built-in, extension, not found).

    Found without importing anything: the top-level package by the import system's finders,
    then submodules by walking its folders, so computing a key never runs a module's code.
    """
    head, _, rest = name.partition(".")
    try:
        spec = importlib.util.find_spec(head)
    except (ImportError, ValueError, AttributeError):
        return None
    if spec is None:
        return None
    if not rest:
        origin = spec.origin
        return os.path.realpath(origin) if origin and origin.endswith(".py") and os.path.isfile(origin) else None
    folders = list(spec.submodule_search_locations or [])
    parts = rest.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        found = None
        for folder in folders:
            package = os.path.join(folder, part)
            if os.path.isdir(package):
                init = os.path.join(package, "__init__.py")
                found = ("package", package, init if os.path.isfile(init) else None)
                break
            if last and os.path.isfile(package + ".py"):
                found = ("module", package + ".py", package + ".py")
                break
        if found is None:
            return None
        if last:
            return os.path.realpath(found[2]) if found[2] else None
        if found[0] != "package":
            return None
        folders = [found[1]]
    return None  # pragma: no cover


@functools.lru_cache(maxsize=None)
def _installed(head: str) -> bool:
    """Whether top-level package ``head`` is a library (standard library, site-packages), not
    the project's own code; entangle is always the project's own, however it is installed."""
    if head == ENTANGLE:
        return False
    if head in sys.builtin_module_names or head in getattr(sys, "stdlib_module_names", ()):
        return True
    path = _module_file(head)   # a top-level lookup imports nothing
    return path is None or path.startswith(_installed_roots())


def _is_own(name: str, top: str) -> bool:
    """Whether module ``name`` is the project's own code for a node of top-level package ``top``."""
    head = name.split(".", 1)[0]
    if head == ENTANGLE or (head == top and not _installed(head)):
        return True
    return not _installed(head)


@functools.lru_cache(maxsize=None)
def _imported_modules(name: str) -> tuple[str, ...]:
    """Names of the modules module ``name``'s source imports (anywhere in the file)."""
    path = _module_file(name)
    if path is None:
        return ()
    try:
        _, imports = _read_module(path)
    except OSError:
        return ()
    is_package = os.path.basename(path) == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: list[str] = []
    for node in imports:
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                found += [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".") if package else []
                base_parts = base_parts[:len(base_parts) - (node.level - 1)] if node.level > 1 else base_parts
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if not base:
                continue
            parts = base.split(".")
            found += [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
            found += [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
    return tuple(dict.fromkeys(found))


@functools.lru_cache(maxsize=None)
def _read_module(path: str) -> tuple[str, tuple[ast.stmt, ...]]:
    """A file's code digest (:func:`code_digest`) and its import statements, from one parse."""
    source = Path(path).read_bytes()
    try:
        tree = ast.parse(source, filename=path)
    except (SyntaxError, ValueError):
        return digest(source)[:16], ()
    imports = tuple(n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)))
    return _tree_digest(tree), imports


@functools.lru_cache(maxsize=None)
def module_closure(name: str, top: str | None = None) -> tuple[tuple[str, str], ...]:
    """``(module, code digest)`` for ``name`` and every own module it imports, transitively.

    ``top`` is the top-level package whose modules count as own (default: ``name``'s); entangle
    and modules outside site-packages and the standard library always do.
    """
    top = top or name.split(".", 1)[0]
    if _installed(top):   # a library's classes (torch.nn.Module in a model's bases): its version
        return ()         # is its installation, not its thousands of source files
    seen: dict[str, str] = {}
    todo = [name]
    while todo:
        mod = todo.pop()
        if mod in seen or not _is_own(mod, top):
            continue
        path = _module_file(mod)
        if path is None:
            seen[mod] = ""
            continue
        seen[mod] = _read_module(path)[0]
        todo.extend(m for m in _imported_modules(mod) if m not in seen)
    return tuple(sorted((m, d) for m, d in seen.items() if d))


def clear_code_cache() -> None:
    """Forget the source digests read so far (for a process that edits and reloads modules)."""
    for fn in (_module_file, _installed, _imported_modules, _read_module, module_closure, source_hash):
        fn.cache_clear()
    _code_version.cache_clear()


def _own_code(obj: Any) -> tuple:
    """The module closure of ``obj``'s module; its own source where the module has no file
    (a function typed at the prompt); nothing for a library's (its installation versions it)."""
    module = getattr(obj, "__module__", None) or ""
    if module and _installed(module.split(".", 1)[0]):
        return ()
    closure = module_closure(module) if module else ()
    if not any(m == module for m, _ in closure):
        closure = (*closure, (qualname(obj), source_hash(obj)))
    return closure


def callable_version(fn: Any) -> str:
    """Code version of a function: every own module its module imports (itself included)."""
    return digest(json.dumps({"callable": qualname(fn), "modules": _own_code(fn)}))[:16]


@functools.lru_cache(maxsize=None)
def _code_version(cls: type) -> str:
    parts, modules = [], set()
    for klass in cls.__mro__:
        if klass.__module__ in ("builtins", "abc", "typing"):
            continue
        parts.append(qualname(klass))
        modules.update(_own_code(klass))
    explicit = getattr(cls, "version", None)
    return digest(json.dumps({"version": explicit, "sources": parts,
                              "modules": sorted(modules)}))[:16]


def code_version(cls: type) -> str:
    """Code version of a node class: its explicit ``version`` and the source it runs.

    The source is the class's (and its bases') plus every module of the project's own code that
    their modules import, transitively (see :func:`module_closure`), so editing a helper module
    never serves stale results. The explicit ``version`` forces a new key when behaviour changes
    outside any source file (a data file, a compiled extension). Cached per process.
    """
    return _code_version(cls)


def key_of(payload: Any) -> str:
    """The cache key of a JSON-able payload (sorted keys, compact)."""
    return digest(json.dumps(payload, sort_keys=True, separators=(",", ":")))
