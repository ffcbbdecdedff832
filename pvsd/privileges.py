"""Dropping root after the privileged ports are bound ([server] user)."""

from __future__ import annotations

import os
import pwd

from pvsd.errors import BadInput, Failure

__all__ = ["drop_privileges"]


def drop_privileges(user: str) -> bool:
    """Switch this process to `user` (its groups too) if running as root; True if it switched.

    An empty `user` keeps the current identity. Asking a non-root process to become
    someone else is an error: it cannot, and silently staying would hide a misconfiguration.
    """
    if not user:
        return False
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise BadInput(f"config key server.user: no such user {user!r} on this host") from None
    if os.geteuid() != 0:
        if os.geteuid() == entry.pw_uid:
            return False
        raise Failure(f"cannot switch to user {user!r}: pvsd is not running as root")
    os.setgroups(os.getgrouplist(entry.pw_name, entry.pw_gid))
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    return True
