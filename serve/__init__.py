"""HTTP serving for ugc-crop: crops and thumbnails on Ray Serve (see docs/serve.md).

serve.service holds the logic (no Ray, no HTTP), serve.routes the FastAPI routes, serve.app the
Ray Serve deployment. Import serve.app only where Ray is wanted.
"""

from serve.errors import ServiceError
from serve.service import CropService
from serve.settings import Settings

__all__ = ["CropService", "ServiceError", "Settings"]
