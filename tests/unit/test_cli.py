"""The command line contract: commands, output, and exit codes (2 bad input, 1 failure, no tracebacks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.net import free_port

from pvsd.cli import main


@pytest.fixture
def farm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path}/farm.db"
    monkeypatch.setenv("PVSD_FARM__DATABASE", url)
    monkeypatch.delenv("PVSD_CONFIG", raising=False)
    assert main(["farm", "init", "--name", "lab"]) == 0
    return url


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_farm_init_with_database_flag_is_idempotent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/sub/farm.db"  # one new folder, as var/ in a fresh checkout
    code, out, _ = run(capsys, "farm", "init", "--database", url)
    assert code == 0 and "created" in out
    code, out, _ = run(capsys, "farm", "init", "--database", url)
    assert code == 0 and "already exists" in out
    assert (tmp_path / "sub" / "farm.db").exists()
    # a whole missing tree is a mistyped path, not a place to make a farm
    code, _, err = run(capsys, "farm", "init", "--database", f"sqlite:///{tmp_path}/none/dir/farm.db")
    assert code == 1 and "does not exist" in err
    assert not (tmp_path / "none").exists()


def test_device_commands(farm: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "vdisk", "create", "win10", "--size", "8G")[0] == 0
    code, out, _ = run(capsys, "device", "add", "AA-BB-CC-00-00-01", "--name", "t1", "--vdisk", "win10")
    assert code == 0 and "aa:bb:cc:00:00:01" in out
    assert run(capsys, "device", "add", "aabbcc000002", "--name", "t2")[0] == 0
    code, out, _ = run(capsys, "device", "list")
    assert out.splitlines()[0].split() == ["MAC", "NAME", "VDISK", "TYPE", "ENABLED", "SITE"]
    assert "aa:bb:cc:00:00:01  t1    win10" in out
    code, out, _ = run(
        capsys, "device", "set", "aa:bb:cc:00:00:02", "--vdisk", "win10", "--disable", "--type", "test"
    )
    assert code == 0
    devices = {d["mac"]: d for d in json.loads(run(capsys, "device", "list", "--json")[1])}
    assert devices["aa:bb:cc:00:00:02"] | {"created_at": 0} == {
        "mac": "aa:bb:cc:00:00:02",
        "name": "t2",
        "vdisk": "win10",
        "enabled": False,
        "type": "test",
        "site": None,
        "created_at": 0,
    }
    assert run(capsys, "device", "set", "aabbcc000002", "--no-vdisk")[0] == 0
    assert json.loads(run(capsys, "device", "show", "aabbcc000002", "--json")[1])["vdisk"] is None
    assert run(capsys, "device", "remove", "aa-bb-cc-00-00-02")[0] == 0
    assert len(json.loads(run(capsys, "device", "list", "--json")[1])) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["device", "add", "zz:zz", "--name", "x"], "expected aa:bb:cc:dd:ee:ff"),
        (["device", "add", "aa:bb:cc:00:00:01", "--name", "dup"], "exists already"),
        (["device", "add", "aa:bb:cc:00:00:09", "--name", "x", "--vdisk", "nope"], "no vDisk 'nope'"),
        (["device", "remove", "aa:bb:cc:00:00:09"], "no device aa:bb:cc:00:00:09"),
        (["device", "set", "aa:bb:cc:00:00:01"], "nothing to change"),
        (["vdisk", "create", "odd", "--size", "1000"], "multiple of the sector size"),
        (["vdisk", "create", "x", "--size", "lots"], "bad size"),
        (["vdisk", "create", "base", "--size", "1M"], "exists already"),
        (["server", "remove", "ghost"], "no server 'ghost'"),
        (["device", "frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_exits_2_with_the_reason_on_stderr(
    farm: str, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert run(capsys, "vdisk", "create", "base", "--size", "1M")[0] == 0
    assert run(capsys, "device", "add", "aa:bb:cc:00:00:01", "--name", "t1")[0] == 0
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert message in err and "error: " in err
    assert out == ""


def test_a_bad_config_exits_2_naming_the_key(
    farm: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[farm]\nheartbeat_interval = 'often'\n")
    code, _, err = run(capsys, "--config", str(config), "server", "list")
    assert code == 2 and "farm.heartbeat_interval" in err
    # the global options work after the subcommand too
    code, _, err = run(capsys, "server", "list", "--config", str(config))
    assert code == 2 and "farm.heartbeat_interval" in err


def test_an_unreachable_database_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PVSD_FARM__DATABASE", f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    code, _, err = run(capsys, "device", "list")
    assert code == 1 and "cannot reach farm database" in err


def test_an_uninitialised_farm_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PVSD_FARM__DATABASE", f"sqlite:///{tmp_path}/none.db")
    code, _, err = run(capsys, "server", "list")
    assert code == 1 and "pvsd farm init" in err
    assert not (tmp_path / "none.db").exists()


def test_lists_when_empty_and_as_json(farm: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "server", "list")
    assert code == 0 and "no servers" in out
    assert json.loads(run(capsys, "server", "list", "--json")[1]) == []
    assert json.loads(run(capsys, "session", "list", "--json")[1]) == []
    assert json.loads(run(capsys, "farm", "show", "--json")[1])["name"] == "lab"
    audit = json.loads(run(capsys, "farm", "audit", "--json")[1])
    assert audit[0]["action"] == "farm.init" and audit[0]["actor"].startswith("cli:")


def test_config_show_and_defaults(
    farm: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PVSD_TFTP__PORT", "1069")
    code, out, _ = run(capsys, "config", "show")
    assert code == 0 and "[tftp]\nenabled = true\nport = 1069\n" in out
    code, out, _ = run(capsys, "config", "defaults")
    assert code == 0 and "port = 69\n" in out and out.startswith("# pvsd configuration")


def test_a_refused_import_leaves_nothing_behind(
    farm: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Importing a directory used to leave a 4 KiB vDisk (its st_size) and an audit entry, and
    the real image was then refused under that name."""
    store = tmp_path / "store"
    monkeypatch.setenv("PVSD_SERVER__STORE", str(store))
    (tmp_path / "folder").mkdir()
    image = tmp_path / "disk.raw"
    image.write_bytes(bytes(range(256)) * 8192)  # 2 MiB
    code, _, err = run(capsys, "vdisk", "import", "d2", str(tmp_path / "folder"))
    assert code == 2 and "directory" in err
    assert json.loads(run(capsys, "vdisk", "list", "--json")[1]) == []
    code, _, err = run(capsys, "vdisk", "import", "d2", str(tmp_path / "odd.raw"))
    assert code == 2 and "no such file" in err
    (store / "d3").mkdir(parents=True)
    (store / "d3" / "v1.img").write_bytes(b"in the way")  # the version's name is taken
    code, _, err = run(capsys, "vdisk", "import", "d3", str(image))
    assert code == 2 and "exists already" in err
    assert sorted(p.name for p in (store / "d3").iterdir()) == ["v1.img"]  # nothing staged left
    assert json.loads(run(capsys, "vdisk", "list", "--json")[1]) == []
    assert not [e for e in json.loads(run(capsys, "farm", "audit", "--json")[1]) if "d2" in json.dumps(e)]

    code, out, _ = run(capsys, "vdisk", "import", "d2", str(image), "--quiet")
    assert code == 0, out
    (vdisk,) = json.loads(run(capsys, "vdisk", "list", "--json")[1])
    assert (vdisk["name"], vdisk["size"], [v["number"] for v in vdisk["versions"]]) == ("d2", 2 << 20, [0, 1])
    assert sorted(p.name for p in (store / "d2").iterdir()) == ["v1.img", "v1.img.chunks", "v1.img.sha256"]
