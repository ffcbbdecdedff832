"""pvsd: an open, highly available network-boot stack."""

__all__ = ["__version__"]

__version__ = "0.1.0"
