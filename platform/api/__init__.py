"""The HTTP API (FastAPI) and the web viewer it serves at `/`."""

from dermground.platform.api.app import create_app

__all__ = ["create_app"]
