"""Former home of the label and detection row layouts, now :mod:`entangle.data.labels`.

Kept so that modules not yet switched keep importing; new code imports
:mod:`entangle.data.labels`.
"""

from __future__ import annotations

from entangle.data.labels import (BOX_COLUMNS, CAR, CLASS_IDS, CLASS_NAMES, CYCLIST, DONTCARE,  # noqa: F401
                                  LABEL_COLUMNS, MISC, PEDESTRIAN, PERSON_SITTING, TRAM, TRUCK,
                                  VAN, B, L)
