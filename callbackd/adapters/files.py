"""Files replaced atomically: readers see the old file or the whole new one, never half of one.

Used for exports, reports and the daemon's status file; the default mode 0640 keeps what
holds clients' numbers or operators' names from being world-readable.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_write(
    path: Path, *, mode: int = 0o640, binary: bool = False, create_parent: bool = True
) -> Iterator[IO[Any]]:
    """Write to a temporary file beside *path*, fsync it, then rename it over *path*.

    Text is UTF-8 with newlines written as given (CSV brings its own CRLF). ``create_parent=False``
    (the CLI's --output): a missing directory is an error, not created.
    """
    path = Path(path)
    if create_parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        f = os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="")
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_text(path: Path, mode: int = 0o640) -> contextlib.AbstractContextManager[IO[str]]:
    """:func:`atomic_write` for text."""
    return atomic_write(path, mode=mode)
