"""Two real `pvsd serve` processes share one farm, on SQLite and on PostgreSQL, and see each other."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from support import needs
from support.postgres import postgres_cluster
from support.pvsd import pvsd, pvsd_env, serve, server_states, wait_for
from support.tftp import fetch

LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
HEARTBEAT = 0.5
DEAD_AFTER = 3.0


def farm_env(farm_url: str) -> dict[str, str]:
    env = pvsd_env(
        farm_url, farm__heartbeat_interval=str(HEARTBEAT), farm__dead_after=str(DEAD_AFTER), log__level="info"
    )
    result = pvsd(env, "farm", "init")
    assert result.returncode == 0, result.stderr
    return env


def states(env: dict[str, str]) -> dict[str, str]:
    return {name: server["state"] for name, server in server_states(env).items()}


def test_two_servers_see_each_other_then_die_and_stop(farm_url: str, tmp_path: Path) -> None:
    env = farm_env(farm_url)
    with (
        serve(env, "pvs1", "127.0.0.11", tmp_path) as pvs1,
        serve(env, "pvs2", "127.0.0.12", tmp_path) as pvs2,
    ):
        wait_for(lambda: states(env) == {"pvs1": "alive", "pvs2": "alive"}, timeout=20)
        servers = server_states(env)
        assert servers["pvs1"]["address"] == "127.0.0.11" and servers["pvs2"]["address"] == "127.0.0.12"
        assert servers["pvs1"]["ports"]["login"] == 6910

        pvs1.signal(signal.SIGKILL)
        took = wait_for(lambda: states(env)["pvs1"] == "dead", timeout=DEAD_AFTER + 2)
        assert took <= DEAD_AFTER + 2
        assert states(env)["pvs2"] == "alive"

        pvs2.signal(signal.SIGTERM)
        assert pvs2.wait() == 0
        assert states(env)["pvs2"] == "stopped"
        events = [event["event"] for event in pvs2.log_events()]
        assert "joined the farm" in events and "left the farm" in events


def test_sigint_also_marks_the_server_stopped(tmp_path: Path) -> None:
    env = farm_env(f"sqlite:///{tmp_path}/farm.db")
    with serve(env, "pvs1", "127.0.0.11", tmp_path) as pvs1:
        wait_for(lambda: states(env).get("pvs1") == "alive", timeout=20)
        pvs1.signal(signal.SIGINT)
        assert pvs1.wait() == 0
    assert states(env) == {"pvs1": "stopped"}


def test_a_second_server_with_the_same_name_and_another_address_refuses_to_start(
    farm_url: str, tmp_path: Path
) -> None:
    env = farm_env(farm_url)
    with serve(env, "pvs1", "127.0.0.11", tmp_path):
        wait_for(lambda: states(env).get("pvs1") == "alive", timeout=20)
        with serve(env, "pvs1", "127.0.0.13", tmp_path) as impostor:
            assert impostor.wait() == 2
            assert "running already" in impostor.log_text() and "at 127.0.0.11" in impostor.log_text()
            assert "Traceback" not in impostor.log_text()
        assert server_states(env)["pvs1"]["address"] == "127.0.0.11"
        assert states(env)["pvs1"] == "alive"


def test_a_second_server_with_the_same_name_refuses_unless_told_to_take_over(
    farm_url: str, tmp_path: Path
) -> None:
    """A second `pvsd serve --name pvs1` used to take over, and the healthy first one exited."""
    env = farm_env(farm_url)
    with serve(env, "pvs1", "127.0.0.11", tmp_path) as first:
        wait_for(lambda: states(env).get("pvs1") == "alive", timeout=20)
        with serve(env, "pvs1", "127.0.0.11", tmp_path) as second:
            assert second.wait() == 2
            assert "running already" in second.log_text() and "--take-over" in second.log_text()
        assert first.process.poll() is None and states(env)["pvs1"] == "alive"
        with serve(env, "pvs1", "127.0.0.11", tmp_path, extra=("--take-over",)) as replacement:
            assert first.wait() == 1  # it sees its name taken and stops
            assert "another pvsd process registered" in first.log_text()
            wait_for(lambda: states(env).get("pvs1") == "alive", timeout=20)
            assert replacement.process.poll() is None


def test_a_killed_server_restarts_at_once_under_its_name(tmp_path: Path) -> None:
    """Its heartbeat is fresh but no longer moves: the newcomer waits one heartbeat, not dead_after."""
    env = farm_env(f"sqlite:///{tmp_path}/farm.db")
    with serve(env, "pvs1", "127.0.0.11", tmp_path) as first:
        wait_for(lambda: any(e["event"] == "serving" for e in first.log_events()), timeout=20)
        first.signal(signal.SIGKILL)
        first.wait()
        with serve(env, "pvs1", "127.0.0.11", tmp_path) as again:
            wait_for(lambda: any(e["event"] == "serving" for e in again.log_events()), timeout=20)
            fresh = "this server's name has a fresh heartbeat"
            assert [e for e in again.log_events() if e["event"].startswith(fresh)], again.log_text()


def test_sighup_neither_kills_the_server_nor_its_workers(tmp_path: Path) -> None:
    env = farm_env(f"sqlite:///{tmp_path}/farm.db")
    with serve(env, "pvs1", "127.0.0.11", tmp_path) as pvs1:
        wait_for(lambda: any(e["event"] == "serving" for e in pvs1.log_events()), timeout=20)
        pvs1.signal(signal.SIGHUP)
        wait_for(lambda: any(e["event"].startswith("SIGHUP") for e in pvs1.log_events()), timeout=10)
        assert pvs1.process.poll() is None
        assert not [e for e in pvs1.log_events() if "died" in e["event"]]
        assert states(env)["pvs1"] == "alive"
        pvs1.signal(signal.SIGTERM)
        assert pvs1.wait() == 0
    assert states(env)["pvs1"] == "stopped"


def test_serve_without_a_farm_exits_1_with_a_hint(tmp_path: Path) -> None:
    env = pvsd_env(f"sqlite:///{tmp_path}/none.db")
    with serve(env, "pvs1", "127.0.0.11", tmp_path) as server:
        assert server.wait() == 1
        assert "pvsd farm init" in server.log_text()


@pytest.mark.timeout(120)
def test_a_server_keeps_running_through_a_database_outage(tmp_path: Path) -> None:
    with postgres_cluster() as cluster:
        env = farm_env(cluster.url())
        with serve(env, "pvs1", "127.0.0.11", tmp_path) as pvs1:
            wait_for(lambda: states(env).get("pvs1") == "alive", timeout=20)
            cluster.stop()
            wait_for(lambda: "farm database unreachable" in pvs1.log_text(), timeout=20)
            assert pvs1.process.poll() is None
            cluster.start()
            wait_for(lambda: "farm database reachable again" in pvs1.log_text(), timeout=30)
            wait_for(lambda: states(env).get("pvs1") == "alive", timeout=10)
            pvs1.signal(signal.SIGTERM)
            assert pvs1.wait() == 0
        assert states(env)["pvs1"] == "stopped"


def test_serve_on_an_address_this_host_lacks_says_so_and_leaves_no_record(tmp_path: Path) -> None:
    env = farm_env(f"sqlite:///{tmp_path}/farm.db")
    with serve(env, "pvs9", "10.99.99.99", tmp_path) as server:
        assert server.wait() == 1
        assert "not an address of this host" in server.log_text()
        assert "another TFTP server" not in server.log_text()
    assert "pvs9" not in states(env)


def test_a_dead_server_whose_clock_runs_ahead_is_seen_dead(tmp_path: Path) -> None:
    """On SQLite each writer stamps its heartbeat with its own clock: a server two hours ahead
    stayed "alive 0.0 s ago" after SIGKILL, in the bootstrap and for `server remove`."""
    # libfaketime preloaded into pvs2 itself (the faketime command would fork, and SIGKILL
    # would kill the wrapper, not the server).
    needs.files((LIBFAKETIME, "faketime"))
    env = farm_env(f"sqlite:///{tmp_path}/farm.db")
    skewed = {**env, "LD_PRELOAD": LIBFAKETIME, "FAKETIME": "+2h", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    with (
        serve(env, "pvs1", "127.0.0.11", tmp_path) as pvs1,
        serve(skewed, "pvs2", "127.0.0.12", tmp_path) as pvs2,
    ):
        wait_for(lambda: states(env) == {"pvs1": "alive", "pvs2": "alive"}, timeout=30)
        assert server_states(env)["pvs2"]["heartbeat_age"] is not None  # seen to move: alive
        wait_for(lambda: b"127.0.0.12" in fetch(("127.0.0.11", 69), "pvs.bootstrap")[0], timeout=20)
        pvs2.signal(signal.SIGKILL)
        pvs2.wait()
        wait_for(lambda: states(env)["pvs2"] == "dead", timeout=DEAD_AFTER + 10)
        # pvs1's own view: the bootstrap it serves lists pvs2 no more
        wait_for(lambda: b"127.0.0.12" not in fetch(("127.0.0.11", 69), "pvs.bootstrap")[0], timeout=20)
        removed = pvsd(env, "server", "remove", "pvs2")
        assert removed.returncode == 0, removed.stderr
        assert pvs1.process.poll() is None


def test_a_deleted_farm_database_stops_its_servers_and_no_second_farm_is_made_under_them(
    tmp_path: Path,
) -> None:
    """They went on, silently, on the deleted inode, while `farm init` made a second farm."""
    database = tmp_path / "farm.db"
    env = farm_env(f"sqlite:///{database}")
    with serve(env, "pvs1", "127.0.0.11", tmp_path) as pvs1:
        wait_for(lambda: states(env).get("pvs1") == "alive", timeout=20)
        pvs1.signal(signal.SIGSTOP)  # so that it cannot notice before farm init runs
        database.unlink()
        refused = pvsd(env, "farm", "init")
        assert refused.returncode == 2 and "servers are still running" in refused.stderr, refused.stderr
        assert not database.exists()
        pvs1.signal(signal.SIGCONT)
        assert pvs1.wait() == 1
        assert "farm database deleted or replaced; stopping" in pvs1.log_text()
    again = pvsd(env, "farm", "init")
    assert again.returncode == 0, again.stderr
