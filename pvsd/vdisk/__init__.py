"""vDisks: image files in a server's store and the scan that reports them to the farm, the
server-side write cache (overlay), and the target's write cache (RAM with overflow to a file)."""

from pvsd.vdisk.cache import CacheFull, CacheStats, WriteCache
from pvsd.vdisk.image import (
    DEFAULT_CHUNK,
    ImageCheck,
    ImportResult,
    Sidecar,
    discard_image,
    image_path,
    import_image,
    move_image,
    read_sidecar,
    sha256_file,
    sidecar_path,
    verify_image,
    write_sidecar,
)
from pvsd.vdisk.overlay import MAP_MAGIC, Overlay, overlay_paths
from pvsd.vdisk.replicas import ReplicaScanner, scan_replicas

__all__ = [
    "DEFAULT_CHUNK",
    "MAP_MAGIC",
    "CacheFull",
    "CacheStats",
    "ImageCheck",
    "ImportResult",
    "Overlay",
    "ReplicaScanner",
    "Sidecar",
    "WriteCache",
    "discard_image",
    "image_path",
    "import_image",
    "move_image",
    "overlay_paths",
    "read_sidecar",
    "scan_replicas",
    "sha256_file",
    "sidecar_path",
    "verify_image",
    "write_sidecar",
]
