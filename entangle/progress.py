"""Progress bars for long loops: tqdm that stays quiet when not on a terminal or when asked.

Use :func:`progress` wherever a loop can take more than a few seconds (data generation,
training epochs, seeds, sweeps). Bars show when stderr is a terminal; ``ENTANGLE_PROGRESS=0``
silences them (logs and CI stay clean), ``ENTANGLE_PROGRESS=1`` forces them on.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

from tqdm.auto import tqdm

#: the environment variable that turns bars off (``0``) or on (``1``); unset: on a terminal only.
ENV = "ENTANGLE_PROGRESS"


def requested() -> bool | None:
    """What ``ENTANGLE_PROGRESS`` asks for: True, False, or None (show on a terminal only)."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    return None


def progress(iterable: Iterable[Any] | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar over ``iterable`` (keyword arguments go to tqdm), quiet unless wanted.

    >>> sum(progress(range(3), desc="demo"))
    3
    """
    want = requested()
    kwargs.setdefault("disable", None if want is None else not want)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
