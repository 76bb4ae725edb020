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
