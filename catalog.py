"""The catalog for analysts: `dermground.catalog.connect()` and the data dictionary.

    from dermground import catalog
    con = catalog.connect()                       # DERMGROUND_HOME/catalog, or catalog.connect(home=...)
    con.sql("SELECT * FROM collections").df()     # pandas; .to_arrow_table(), .pl(), .fetchall() as DuckDB does
    # (.arrow() is a stream: it holds the connection until read to the end)
    con.register("mine", my_frame)                # your own pandas/Arrow data, to join with the views
    # (`FROM my_frame` by variable name says "Table ... does not exist": it is off on this connection)

Every view and column is described in docs/CATALOG.md (`dermground sql --schema` prints it).
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from dermground.platform.catalog_dictionary import View, dictionary

__all__ = ["connect", "dictionary", "View"]


def connect(home: str | Path | None = None, *, catalog_dir: str | Path | None = None) -> duckdb.DuckDBPyConnection:
    """A read-only, guarded DuckDB connection with every catalog view, over the files written so
    far (connect again to see later writes).

    The catalog is `catalog_dir` if given, else HOME/catalog with HOME from `home` or the
    settings (DERMGROUND_HOME, default ./.dermground).
    """
    from dermground.platform.analyst import connect as connect_folder

    if catalog_dir is None:
        from dermground.platform.settings import load_settings

        settings = load_settings(home=Path(home)) if home is not None else load_settings()
        catalog_dir = settings.catalog_dir
    folder = Path(catalog_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"no catalog at {folder}: ingest or evaluate first, or pass home=/catalog_dir= "
                                "(or set DERMGROUND_HOME)")
    return connect_folder(folder)
