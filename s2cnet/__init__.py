"""ugc-crop: S2CNet spatial-semantic collaborative cropping for user-generated photos."""

from s2cnet.candidates import GridConfig, candidates, parse_ratio
from s2cnet.cropper import Crop, Cropper
from s2cnet.model import S2CNet, S2CNetConfig

__all__ = ["Crop", "Cropper", "GridConfig", "S2CNet", "S2CNetConfig", "candidates", "parse_ratio"]
