"""Names of things in the farm (servers, devices, vDisks, sites): safe in file names, URLs and logs."""

from __future__ import annotations

import re

from pvsd.errors import BadInput

__all__ = ["NAME_PATTERN", "NAME_RULE", "check_name"]

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
NAME_RULE = "1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"


def check_name(kind: str, value: str) -> str:
    """Return `value` if it is a valid name, else raise BadInput saying what a name may be."""
    if not NAME_PATTERN.fullmatch(value):
        raise BadInput(f"bad {kind} name {value!r}: use {NAME_RULE}")
    return value
