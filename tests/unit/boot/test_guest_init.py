"""pvsd.boot.guest_init: the guest's /init is valid sh for busybox, and follows the agent's contract."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from support import needs

from pvsd.boot.guest_init import AGENT_LAUNCHER, guest_init, udhcpc_script
from pvsd.target.cmdline import AGENT_ARGV0, READY_FILE

BUSYBOX = Path("/bin/busybox")


@pytest.mark.parametrize("script", [guest_init(READY_FILE, AGENT_ARGV0), udhcpc_script()])
def test_busybox_sh_parses_it(tmp_path: Path, script: str) -> None:
    needs.files((str(BUSYBOX), "busybox-static"))
    path = tmp_path / "script"
    path.write_text(script)
    checked = subprocess.run([str(BUSYBOX), "sh", "-n", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_init_starts_the_agent_under_its_name_and_waits_for_its_ready_file() -> None:
    script = guest_init(READY_FILE, AGENT_ARGV0)
    assert f"exec -a {AGENT_ARGV0} /pvsd/bin/python3 -S -B /pvsd/agent.py" in script
    assert f"[ -s {READY_FILE} ]" in script
    assert script.rstrip().endswith('exec switch_root /newroot "$init"')


def test_the_launcher_keeps_openssl_out_before_anything_imports_it() -> None:
    lines = AGENT_LAUNCHER.splitlines()
    assert lines.index('sys.modules["_ssl"] = None') < lines.index("from pvsd.target.diskless import main")
