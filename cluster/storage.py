"""Run storage through pyarrow filesystems: a local path or a URI (``file://``, ``s3://``, ``gs://``), the same
calls for both, so that ``--resume`` and a run's ``config.json`` work wherever Ray Train keeps the checkpoints.

The path helpers are ``cfgdiff.fsio``'s; this module adds what runs need: fetching a checkpoint
to a local folder (to check it before any worker starts); step_checkpoints is in ``cfgdiff.export``.
"""

from __future__ import annotations

import os
from pathlib import Path

from cfgdiff import fsio

CONFIG = "config.json"

# the core helpers, under the names this package's callers use
is_uri, location, join, exists, read_text, write_text = (fsio.is_uri, fsio.location, fsio.join, fsio.exists,
                                                         fsio.read_text, fsio.write_text)
delete_dir, set_endpoint, check_storage = fsio.delete, fsio.set_endpoint, fsio.check_storage


def fetch(where: str, local: str | os.PathLike) -> Path:
    """Copy the folder ``where`` into the local folder ``local`` (made if missing); a local ``where`` is
    returned as it is."""
    return fsio.download(where, local) if is_uri(where) else Path(where)


def ray_storage(where: str) -> dict:
    """``RunConfig``'s storage arguments for ``where``: a local path made absolute (Train workers chdir elsewhere), a
    URI as it is. Ray opens a URI with pyarrow's ``FileSystem.from_uri``, which looks for real credentials; with a
    GCS emulator (``STORAGE_EMULATOR_HOST``, as in the tests) Ray gets cfgdiff's anonymous filesystem for it
    instead, and the path inside that filesystem."""
    if not is_uri(where):
        return {"storage_path": os.path.abspath(where)}
    if where.startswith("gs://") and os.environ.get(fsio.GCS_EMULATOR_ENV):
        fs, path = location(where)
        return {"storage_path": path, "storage_filesystem": fs}
    return {"storage_path": where.rstrip("/")}


def as_uri(storage: str, path: str | None) -> str | None:
    """A path Ray reports inside the filesystem of URI ``storage`` (a checkpoint's ``.path``: ``bucket/...``, no
    scheme), as a URI that cfgdiff's commands can open; local paths and URIs are returned as they are."""
    if path is None or is_uri(path) or not is_uri(storage):
        return path
    return storage.split("://", 1)[0] + "://" + path.lstrip("/")
