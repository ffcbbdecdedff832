"""The target side: a client that logs in and streams a vDisk (`pvsd target ...`)."""

__all__: list[str] = []
