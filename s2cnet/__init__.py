"""ugc-crop: S2CNet spatial-semantic collaborative cropping for user-generated photos.

Exports load on first use, so ``import s2cnet.cli`` (and ``s2cnet --help``) does not load torch.
"""

from importlib import import_module

_EXPORTS = {"Crop": "s2cnet.cropper", "Cropper": "s2cnet.cropper", "GridConfig": "s2cnet.candidates",
            "S2CNet": "s2cnet.model", "S2CNetConfig": "s2cnet.model", "candidates": "s2cnet.candidates",
            "parse_ratio": "s2cnet.candidates"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 's2cnet' has no attribute {name!r}")
