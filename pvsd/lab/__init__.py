"""The lab: a PXE network of namespaces on this machine (site DHCP, pvsd servers, QEMU targets)."""

__all__: list[str] = []
