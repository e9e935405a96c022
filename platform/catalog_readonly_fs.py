"""The catalog folder as a read-only file system, for the analysts' DuckDB connection.

DuckDB's file access guard (`allowed_directories`) cannot tell reading from writing: a folder a
connection may read, it may also `COPY ... TO`. So the analyst's connection does not reach the
catalog through DuckDB's local file system at all: its views name files as
`dgcatalog:///<catalog>/<table>/<file>.parquet`, served by this fsspec file system, which opens
files under the catalog folder for reading and refuses every write, move, removal or folder.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from dermground.platform.next_step import next_command

PROTOCOL = "dgcatalog"
PREFIX = f"{PROTOCOL}://"


class ReadOnlyCatalogFileSystem(AbstractFileSystem):
    """Files under `root`, readable only; paths are `dgcatalog://` + an absolute local path."""

    protocol = PROTOCOL
    cachable = False  # one instance per connection: its root is that connection's catalog

    def __init__(self, root: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = Path(root).resolve()
        self._local = LocalFileSystem()
        self._resolved: dict[str, str] = {}

    def _local_path(self, path: str) -> str:
        # Resolving costs a few lstat calls per path component and DuckDB asks about each file
        # several times per query (3,000 files before a compact): remember the answers. Nothing
        # this connection can do creates or changes a link under the root.
        known = self._resolved.get(path)
        if known is not None:
            return known
        resolved = Path(self._strip_protocol(path)).resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise PermissionError(f"{resolved} is outside the catalog folder {self.root}")
        self._resolved[path] = str(resolved)
        return str(resolved)

    def _refuse(self, path: str, *_: object, **__: object) -> None:
        raise PermissionError(
            f"an analyst's connection does not write into the catalog ({self._strip_protocol(path)}): it is "
            "read-only. Keep results in TEMP tables, or write them elsewhere from Python "
            f"(con.sql(...).df() / .to_arrow_table()) or with `{next_command('sql --out FILE')}`.")

    # --- reading ----------------------------------------------------------------------------
    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if mode != "rb":
            self._refuse(path)
        return PositionedReader(self._local_path(path))

    def glob(self, path: str, **kwargs: Any) -> Any:
        # The views name each file, and DuckDB globs every name before it reads it: a file gone
        # since the connection was made (a compaction deletes what it merged after its grace
        # period) would only get DuckDB's bare "No files found that match the pattern".
        if not any(c in path for c in "*?[") and not os.path.exists(self._local_path(path)):
            raise FileNotFoundError(
                f"{self._local_path(path)} is gone: this connection reads the catalog's files as they were "
                "when it was made, and `dermground catalog compact` deletes the files it merged once its grace "
                "period (--keep-minutes, 60 by default) is over. Connect again (dermground.catalog.connect()) "
                "to read the merged files.")
        return super().glob(path, **kwargs)

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        return self._local.info(self._local_path(path))

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list:
        return self._local.ls(self._local_path(path), detail=detail)

    def modified(self, path: str) -> Any:
        return self._local.modified(self._local_path(path))

    def created(self, path: str) -> Any:
        return self._local.created(self._local_path(path))

    # --- everything that would change the folder: refused -----------------------------------
    mkdir = makedirs = rmdir = rm = rm_file = _rm = mv = cp_file = copy = touch = pipe_file = put_file = _refuse


class PositionedReader:
    """A file open for reading whose position is per thread, read with pread.

    DuckDB's threads share one handle and call seek() and read() on it as two steps, each taking
    the GIL on its own: with one shared position another thread's seek lands in between and a
    Parquet page is read from the wrong offset.
    """

    def __init__(self, path: str) -> None:
        self.closed = True  # until the file is open: __del__ of a reader whose open failed has nothing to close
        self._fd = os.open(path, os.O_RDONLY)
        self.closed = False
        self.size = os.fstat(self._fd).st_size
        self._position = threading.local()

    def tell(self) -> int:
        return getattr(self._position, "value", 0)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.tell(), os.SEEK_END: self.size}[whence]
        self._position.value = base + offset
        return self._position.value

    def read(self, size: int = -1) -> bytes:
        start = self.tell()
        wanted = self.size - start if size is None or size < 0 else size
        chunks, done = [], 0
        while done < wanted:
            chunk = os.pread(self._fd, wanted - done, start + done)
            if not chunk:  # end of file
                break
            chunks.append(chunk)
            done += len(chunk)
        self._position.value = start + done
        return b"".join(chunks)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._fd)

    def __del__(self) -> None:  # DuckDB drops its handles without closing every one
        self.close()

    def __enter__(self) -> PositionedReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
