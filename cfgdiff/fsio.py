"""Where files live: a local path or a URI (``file://``, ``s3://``, ``gs://``), read and written through pyarrow
filesystems, so that a dataset, a run or an output on object storage takes the same calls as one on disk.

S3-compatible stores are reached through the standard ``AWS_ENDPOINT_URL`` (and the usual credentials), which
pyarrow reads when it resolves an ``s3://`` URI. ``gs://`` uses Google's default credentials, or, when the standard
``STORAGE_EMULATOR_HOST`` names a GCS emulator (as it does for Google's own clients and gcloud), that endpoint with
anonymous credentials.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from .errors import InputError


def is_uri(where: str | os.PathLike) -> bool:
    return "://" in str(where)


def location(where: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI; unreachable storage is one line."""
    where = str(where)
    if not is_uri(where):
        return pafs.LocalFileSystem(), os.path.abspath(where)
    emulator = os.environ.get(GCS_EMULATOR_ENV)
    if emulator and where.startswith("gs://"):
        return _gcs_emulator(emulator), where.removeprefix("gs://").rstrip("/")
    try:
        return pafs.FileSystem.from_uri(where)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise InputError(f"{where}: cannot open the storage ({first_line(e)})") from None


GCS_EMULATOR_ENV = "STORAGE_EMULATOR_HOST"


def _gcs_emulator(host: str) -> pafs.FileSystem:
    """A GCS emulator (``STORAGE_EMULATOR_HOST``: ``http://HOST:PORT`` or ``HOST:PORT``), reached anonymously."""
    u = urlparse(host if "://" in host else f"http://{host}")
    if u.scheme not in ("http", "https") or not u.netloc:
        raise InputError(f"{GCS_EMULATOR_ENV}={host!r}: expected http(s)://HOST:PORT")
    return pafs.GcsFileSystem(anonymous=True, endpoint_override=u.netloc, scheme=u.scheme,
                              retry_time_limit=timedelta(seconds=10))


def set_endpoint(url: str) -> None:
    """``--storage-endpoint``: an S3-compatible server (MinIO, Ceph, a local test server) for s3:// URIs, through
    the standard ``AWS_ENDPOINT_URL`` that pyarrow and Ray read; Ray workers get it too
    (``cluster.runtime.storage_env``)."""
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
        raise InputError(f"{option} {where}: cannot reach the storage ({first_line(e)})") from None
    if bucket and info.type == pafs.FileType.NotFound:
        raise InputError(f"{option} {where}: cannot reach the storage (bucket {bucket!r} not found; create it first)")


def first_line(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def join(where: str | os.PathLike, *parts: str) -> str:
    where = str(where)
    return "/".join([where.rstrip("/"), *parts]) if is_uri(where) else os.path.join(where, *parts)


def name(where: str | os.PathLike) -> str:
    return str(where).rstrip("/").rsplit("/", 1)[-1] if is_uri(where) else Path(where).name


def kind(where: str | os.PathLike) -> pafs.FileType:
    fs, path = location(where)
    try:
        return fs.get_file_info(path).type
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"{where}: cannot reach the storage ({first_line(e)})") from None


def exists(where: str | os.PathLike) -> bool:
    return kind(where) != pafs.FileType.NotFound


def is_dir(where: str | os.PathLike) -> bool:
    return kind(where) == pafs.FileType.Directory


def is_file(where: str | os.PathLike) -> bool:
    return kind(where) == pafs.FileType.File


def occupied(where: str | os.PathLike) -> bool:
    """Something is at ``where``: a file, or a folder with anything in it."""
    fs, path = location(where)
    t = kind(where)
    if t == pafs.FileType.Directory:
        return bool(fs.get_file_info(pafs.FileSelector(path)))
    return t != pafs.FileType.NotFound


def list_files(where: str | os.PathLike, suffix: str = "") -> list[str]:
    """Files directly inside the folder ``where`` whose names end in ``suffix``, sorted; [] for no folder."""
    fs, path = location(where)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path))
    return sorted(join(where, i.base_name) for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(suffix))


def open_input(where: str | os.PathLike) -> pa.NativeFile:
    """A random-access file (memory-mapped when local)."""
    if not is_uri(where):
        return pa.memory_map(str(where))
    fs, path = location(where)
    return fs.open_input_file(path)


def read_bytes(where: str | os.PathLike) -> bytes:
    fs, path = location(where)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(where: str | os.PathLike) -> str:
    return read_bytes(where).decode()


def write_text(where: str | os.PathLike, text: str) -> None:
    fs, path = location(where)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def delete(where: str | os.PathLike) -> None:
    """Remove a file or a folder (with its contents); nothing if absent."""
    fs, path = location(where)
    t = fs.get_file_info(path).type
    if t == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif t == pafs.FileType.File:
        fs.delete_file(path)


def upload(local: str | os.PathLike, where: str) -> None:
    """Copy a local file or folder to ``where`` (a URI), replacing what is there."""
    fs, path = location(where)
    delete(where)
    if Path(local).is_dir():
        fs.create_dir(path, recursive=True)
    else:
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def download(where: str, local: str | os.PathLike) -> Path:
    """Copy the file or folder ``where`` (a URI) to the local path ``local``."""
    fs, path = location(where)
    local = Path(local)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        local.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return local


@contextmanager
def staged(where: str | os.PathLike | None, last: str | None = None, replace: bool = False) -> Iterator[Path | None]:
    """A local folder that stands for the output folder ``where``: ``where`` itself when it is local (or None);
    for a URI a temporary folder whose entries are uploaded into ``where`` when the block succeeds (``last`` after
    the others, so that its presence means a complete upload; with ``replace`` the old ``where`` is removed first),
    and nothing is uploaded when it fails."""
    if where is None or not is_uri(where):
        yield None if where is None else Path(where)
        return
    tmp = Path(tempfile.mkdtemp(prefix=".cfgdiff-stage-"))
    try:
        yield tmp
        if replace:
            delete(where)
        try:
            for entry in sorted(os.listdir(tmp), key=lambda n: n == last):
                upload(tmp / entry, join(where, entry))
        except BaseException:
            if replace:
                delete(where)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def local_copy(where: str | os.PathLike) -> Iterator[Path]:
    """A local path holding ``where``: itself when local, else a temporary download removed afterwards."""
    if not is_uri(where):
        yield Path(where)
        return
    tmp = Path(tempfile.mkdtemp(prefix=".cfgdiff-fetch-"))
    try:
        yield download(str(where), tmp / name(where))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
