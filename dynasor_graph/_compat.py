"""Deprecated names, kept so that existing code keeps working while it moves to the new ones.

One idea, one name: the token budget of a multi-path program is ``token_budget`` (was
``max_total_tokens``), a tree step's size is ``chunk_size`` as in Dynasor-CoT (was
``step_tokens``). The old field names are still accepted, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import warnings
from typing import Any


def renamed_fields(data: Any, renames: dict[str, str], owner: str) -> Any:
    """``data`` (a config's input) with deprecated keys moved to their new names."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for old, new in renames.items():
        if old in data:
            if new in data:
                raise ValueError(f"{owner}: give {new}, not both {new} and {old}")
            warnings.warn(f"{owner}.{old} is deprecated: use {new}", DeprecationWarning,
                          stacklevel=4)
            data[new] = data.pop(old)
    return data
