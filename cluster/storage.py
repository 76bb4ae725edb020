"""Run storage through pyarrow filesystems: a local path or a URI (``file://``, ``s3://``, ``gs://``), the same
calls for both, so that ``--resume`` and a run's ``config.json`` work wherever Ray Train keeps the checkpoints.

``location(uri)`` is (filesystem, path); the helpers read and write small files, list a run's checkpoints and
fetch one to a local folder (to check it before any worker starts).
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from cfgdiff.errors import InputError

CONFIG = "config.json"


def is_uri(where: str) -> bool:
    return "://" in where


def location(where: str) -> tuple[pafs.FileSystem, str]:
    if is_uri(where):
        return pafs.FileSystem.from_uri(where)
    return pafs.LocalFileSystem(), os.path.abspath(where)


def join(where: str, *parts: str) -> str:
    return "/".join([where.rstrip("/"), *parts]) if is_uri(where) else os.path.join(where, *parts)


def exists(where: str) -> bool:
    fs, path = location(where)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_text(where: str) -> str:
    fs, path = location(where)
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def write_text(where: str, text: str) -> None:
    fs, path = location(where)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def delete_dir(where: str) -> None:
    fs, path = location(where)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)


def checkpoints(run: str) -> list[str]:
    """The run's ``step_*`` checkpoints (those with a config.json), oldest first."""
    fs, path = location(run)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    found = [i.base_name for i in fs.get_file_info(pafs.FileSelector(path)) if i.type == pafs.FileType.Directory
             and i.base_name.startswith("step_") and fs.get_file_info(f"{i.path}/{CONFIG}").is_file]
    return [join(run, name) for name in sorted(found)]


def fetch(where: str, local: str | os.PathLike) -> Path:
    """Copy the folder ``where`` into the local folder ``local`` (made if missing); a local ``where`` is
    returned as it is."""
    if not is_uri(where):
        return Path(where)
    fs, path = location(where)
    Path(local).mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return Path(local)


def set_endpoint(url: str) -> None:
    """``--storage-endpoint``: an S3-compatible server (MinIO, Ceph, a local test server) for s3:// URIs,
    through the standard ``AWS_ENDPOINT_URL`` that pyarrow and Ray read; given to the workers too
    (``runtime.storage_env``)."""
    from urllib.parse import urlparse

    u = urlparse(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise InputError(f"--storage-endpoint {url!r}: expected http(s)://HOST[:PORT]")
    os.environ["AWS_ENDPOINT_URL"] = url


def check_storage(where: str, option: str = "--out") -> None:
    """Fail in one line when URI storage cannot be reached or read (a wrong endpoint, bucket or credentials),
    before any worker starts."""
    if not is_uri(where):
        return
    try:
        fs, path = location(where)
        bucket = path.split("/", 1)[0] if where.startswith(("s3://", "gs://")) else None
        info = fs.get_file_info(bucket or path)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise InputError(f"{option} {where}: cannot reach the storage ({str(e).splitlines()[0][:200]})") from None
    if bucket and info.type == pafs.FileType.NotFound:
        raise InputError(f"{option} {where}: cannot reach the storage (bucket {bucket!r} not found; create it first)")
