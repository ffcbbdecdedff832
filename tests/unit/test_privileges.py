from __future__ import annotations

import pwd
import subprocess
import sys

import pytest
from support import needs

from pvsd.errors import BadInput
from pvsd.privileges import drop_privileges


def test_no_user_keeps_the_identity() -> None:
    assert drop_privileges("") is False


def test_an_unknown_user_names_the_key() -> None:
    with pytest.raises(BadInput, match=r"server\.user"):
        drop_privileges("no-such-user-pvsd")


def test_root_switches_to_the_user_and_its_groups() -> None:
    needs.root("switching users")
    # In a child process: the test runner itself must stay root.
    code = (
        "import os; from pvsd.privileges import drop_privileges; "
        "print(drop_privileges('nobody'), os.getuid())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", str(pwd.getpwnam("nobody").pw_uid)]
