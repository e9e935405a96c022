"""Where the browser viewer's files live (index.html and its assets, shipped with the package).

Its own module so that the app (which mounts /static) and the routes (which serve / ) both import
it and neither imports the other.
"""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
