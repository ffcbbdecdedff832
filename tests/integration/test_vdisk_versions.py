"""`pvsd vdisk versions / promote / revert`, as an operator runs them: the states move in PVS's
order, each refusal names its reason and changes nothing, and every change is audited."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pvsd.farm.store import open_store
from tests.support.pvsd import pvsd, pvsd_env


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    url = f"sqlite:///{tmp_path}/farm.db"
    env = pvsd_env(url, server__store=str(tmp_path / "store"), server__name="pvs1")
    assert pvsd(env, "farm", "init", "--name", "lab").returncode == 0
    # Back to maintenance a version is writable on the server that runs the command: one the farm knows.
    open_store(url, "test").register_server("pvs1", "127.0.0.1", {}, 1.0, "pvs1-instance", 8.0)
    image = tmp_path / "disk.img"
    for _ in range(2):
        image.write_bytes(os.urandom(1 << 20))
        assert pvsd(env, "vdisk", "import", "lab", str(image), "--no-boot", "--quiet").returncode == 0
    return env


def states(env: dict[str, str]) -> dict[int, str]:
    done = pvsd(env, "vdisk", "versions", "lab", "--json")
    assert done.returncode == 0, done.stderr
    return {v["number"]: v["state"] for v in json.loads(done.stdout) if v["number"]}


def test_versions_move_down_and_up_in_order(env: dict[str, str]) -> None:
    assert states(env) == {1: "production", 2: "production"}
    assert pvsd(env, "vdisk", "revert", "lab", "2").returncode == 0
    assert pvsd(env, "vdisk", "revert", "lab", "2").returncode == 0
    assert states(env) == {1: "production", 2: "maintenance"}
    assert pvsd(env, "vdisk", "promote", "lab", "2", "test").returncode == 0
    promoted = pvsd(env, "vdisk", "promote", "lab", "2", "production")
    assert promoted.returncode == 0 and "test -> production" in promoted.stdout
    assert states(env) == {1: "production", 2: "production"}
    table = pvsd(env, "vdisk", "versions", "lab").stdout
    assert "VERSION" in table and "production" in table


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("promote", "lab", "2", "test"), "version 2 is production: it can be promoted to nothing further"),
        (("promote", "lab", "7", "test"), "has no version 7 (it has: 0, 1, 2)"),
        (("revert", "nosuch", "1"), "nosuch"),
    ],
)
def test_refusals_name_the_reason_and_change_nothing(
    env: dict[str, str], argv: tuple[str, ...], message: str
) -> None:
    before = states(env)
    done = pvsd(env, "vdisk", *argv)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert states(env) == before


def test_the_last_production_version_cannot_be_reverted(env: dict[str, str]) -> None:
    assert pvsd(env, "vdisk", "revert", "lab", "2").returncode == 0
    done = pvsd(env, "vdisk", "revert", "lab", "1")
    assert done.returncode == 2 and "only production version" in done.stderr
    assert states(env) == {1: "production", 2: "test"}
