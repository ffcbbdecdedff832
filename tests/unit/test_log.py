from __future__ import annotations

import io
import json
import sys

import pytest

from pvsd.log import configure_logging, get_logger, request_logger


def test_json_lines_carry_the_peer_and_mac_of_a_request() -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)
    log = request_logger(get_logger("login"), ("192.0.2.7", 6910), "aa:bb:cc:dd:ee:ff")
    log.info("login refused", reason="unknown MAC")
    log.debug("not shown at info")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert line["peer"] == "192.0.2.7:6910"
    assert line["mac"] == "aa:bb:cc:dd:ee:ff"
    assert line["component"] == "login"
    assert line["event"] == "login refused" and line["level"] == "info" and "timestamp" in line


def test_console_format_is_plain_text_and_level_filters() -> None:
    out = io.StringIO()
    configure_logging("warning", "console", out)
    get_logger("farm").info("hidden")
    request_logger(get_logger("farm"), "10.0.0.1:67").warning("database slow", seconds=3)
    text = out.getvalue()
    assert "hidden" not in text
    assert "database slow" in text and "peer=10.0.0.1:67" in text and not text.lstrip().startswith("{")


def test_auto_picks_json_when_not_a_terminal() -> None:
    out = io.StringIO()
    configure_logging("info", "auto", out)
    get_logger("x").info("hello")
    assert json.loads(out.getvalue())["event"] == "hello"


def test_without_a_stream_lines_go_to_whatever_stderr_is_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CLI run in a test configures logging on the test's captured stderr; once that is closed,
    later lines must reach the stderr of the moment, not raise on the closed file."""
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging("info", "json")
    get_logger("x").info("one")
    first.close()
    monkeypatch.setattr(sys, "stderr", second)
    get_logger("x").info("two")
    assert json.loads(second.getvalue())["event"] == "two"
