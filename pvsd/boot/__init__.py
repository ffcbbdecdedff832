"""What a target is given to boot: pvs.bootstrap, pvs.ipxe and the per-device scripts (pure
generators), and publishing them to the TFTP processes."""

from pvsd.boot.bootstrap import BOOTSTRAP_FORMAT, BOOTSTRAP_NAME, BootstrapCache, bootstrap_document
from pvsd.boot.ipxe import (
    DEVICE_SCRIPT_PREFIX,
    IPXE_BOOTSTRAP_NAME,
    device_script,
    device_script_name,
    ipxe_bootstrap,
    unknown_device_script,
)
from pvsd.boot.publish import BootFiles, Publisher

__all__ = [
    "BOOTSTRAP_FORMAT",
    "BOOTSTRAP_NAME",
    "DEVICE_SCRIPT_PREFIX",
    "IPXE_BOOTSTRAP_NAME",
    "BootFiles",
    "BootstrapCache",
    "Publisher",
    "bootstrap_document",
    "device_script",
    "device_script_name",
    "ipxe_bootstrap",
    "unknown_device_script",
]
