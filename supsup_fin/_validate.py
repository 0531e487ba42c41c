"""Type checks shared by the library's argument validation."""

from __future__ import annotations

import numpy as np


def is_int(value: object) -> bool:
    """Whether ``value`` is an integer: a Python ``int`` or a numpy integer, but not a ``bool``."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
