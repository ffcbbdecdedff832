"""vDisks on a server: image files in the store folder, and the server-side write cache (overlay)."""

from pvsd.vdisk.image import (
    DEFAULT_CHUNK,
    ImageCheck,
    ImportResult,
    Sidecar,
    image_path,
    import_image,
    read_sidecar,
    sha256_file,
    sidecar_path,
    verify_image,
    write_sidecar,
)
from pvsd.vdisk.overlay import MAP_MAGIC, Overlay, overlay_paths

__all__ = [
    "DEFAULT_CHUNK",
    "MAP_MAGIC",
    "ImageCheck",
    "ImportResult",
    "Overlay",
    "Sidecar",
    "image_path",
    "import_image",
    "overlay_paths",
    "read_sidecar",
    "sha256_file",
    "sidecar_path",
    "verify_image",
    "write_sidecar",
]
