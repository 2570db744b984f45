"""Bundled images in Walrus: manifest validation, the decrypting producer, the decrypted-image cache and the
internal operations ValidateImage / CacheImage / FlushImage (CLC) and GetDecryptedImage (NC)."""

from __future__ import annotations

from typing import Any


def install(service: Any) -> Any:
    """Register the image operations on a WalrusService (call from its __init__); returns the component."""
    from services.walrus.images.component import ImagesComponent

    service.images = ImagesComponent(service)
    return service.images
