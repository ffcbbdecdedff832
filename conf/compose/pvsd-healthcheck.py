"""The pvsN services' health check: this server's GET /farm/status answers (pvsd/api/status.py).

It answers once the server serves, and while the farm database is down too: a server that
boots known devices from its snapshot is healthy. Exit 0 when healthy, 1 with the reason.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request

STATUS = "http://{address}:{port}/farm/status"


def main() -> int:
    url = STATUS.format(
        address=os.environ.get("PVSD_SERVER__ADDRESS", "127.0.0.1"),
        port=os.environ.get("PVSD_API__PORT", "54321"),
    )
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:  # noqa: S310 - an http:// URL made above
            status = json.load(answer)
    except (OSError, ValueError) as error:
        print(f"{url}: {error}")
        return 1
    print(json.dumps(status))
    return 0


if __name__ == "__main__":
    sys.exit(main())
