"""The artifact store: uploads, checkpoints and job outputs, behind one interface.

Two backends, chosen by settings:

- local (default): objects are files under KD_DATA_DIR; a location is the file's
  absolute path. Every process must see the same folder (one host, or a shared mount).
- S3-compatible object storage (KD_STORAGE_URL=s3://bucket/prefix, KD_S3_ENDPOINT_URL
  for MinIO/Ceph/moto; credentials from the usual AWS variables): a location is
  `s3://bucket/prefix/<key>`. Hosts share nothing but the bucket; a worker downloads
  what it needs into a local cache (KD_DATA_DIR/cache), downloads stream from the
  bucket with Range.

The database stores the location, so a row says where its bytes are even if the
settings change later. Keys are the same relative names in both backends:
`files/<file_id>`, `jobs/<job_id>/<output>`, `jobs/<job_id>/checkpoints/<name>`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from app.settings import Settings

CHUNK = 1 << 20


def _split(location: str) -> tuple[str, str]:
    bucket, _, key = location.removeprefix("s3://").partition("/")
    return bucket, key


def is_remote(location: str) -> bool:
    return location.startswith("s3://")


@lru_cache(maxsize=8)
def _s3(endpoint_url: str, region: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url or None,
        region_name=region,
        config=Config(retries={"max_attempts": 5, "mode": "standard"}),
    )


def s3_client(settings: Settings) -> Any:
    return _s3(settings.s3_endpoint_url, settings.s3_region)


def put(settings: Settings, src: Path, key: str, move: bool = False) -> str:
    """Store the local file `src` under `key`; returns its location. Locally the file
    ends up at KD_DATA_DIR/key (moved or copied there, or left where it already is)."""
    if settings.storage_url:
        location = f"{settings.storage_url.rstrip('/')}/{key}"
        bucket, object_key = _split(location)
        s3_client(settings).upload_file(str(src), bucket, object_key)
        if move:
            src.unlink(missing_ok=True)
        return location
    dest = (settings.data_dir / key).resolve()
    if dest != src.resolve():
        dest.parent.mkdir(parents=True, exist_ok=True)
        if move:
            os.replace(src, dest)
        else:
            shutil.copyfile(src, dest)
    with contextlib.suppress(OSError):  # stored objects are private, whatever the umask
        os.chmod(dest, 0o600)
    return str(dest)


def exists(settings: Settings, location: str) -> bool:
    if not is_remote(location):
        return Path(location).is_file()
    from botocore.exceptions import ClientError

    bucket, key = _split(location)
    try:
        s3_client(settings).head_object(Bucket=bucket, Key=key)
    except ClientError:
        return False
    return True


def local_copy(settings: Settings, location: str) -> Path:
    """A path on this host holding the object: the file itself when local, else a copy
    in the cache (objects never change once written, so a cached copy stays valid)."""
    if not is_remote(location):
        return Path(location)
    bucket, key = _split(location)
    path = (settings.data_dir / "cache" / bucket / key).resolve()
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.part")
    s3_client(settings).download_file(bucket, key, str(tmp))
    os.replace(tmp, path)
    return path


def read_range(settings: Settings, location: str, start: int, length: int) -> Iterator[bytes]:
    """`length` bytes from `start`, in chunks, streamed from the file or the bucket."""
    if length <= 0:
        return
    if not is_remote(location):
        with open(location, "rb") as fh:
            fh.seek(start)
            while length > 0:
                chunk = fh.read(min(CHUNK, length))
                if not chunk:
                    return
                length -= len(chunk)
                yield chunk
        return
    bucket, key = _split(location)
    body = s3_client(settings).get_object(
        Bucket=bucket, Key=key, Range=f"bytes={start}-{start + length - 1}"
    )["Body"]
    try:
        yield from body.iter_chunks(CHUNK)
    finally:
        body.close()


def delete(settings: Settings, location: str) -> None:
    if not is_remote(location):
        Path(location).unlink(missing_ok=True)
        return
    bucket, key = _split(location)
    s3_client(settings).delete_object(Bucket=bucket, Key=key)


def delete_prefix(settings: Settings, prefix: str) -> None:
    """Remove every object under `prefix` (a job's outputs and checkpoints), and the
    local folder of the same name (worker outputs, cached copies)."""
    shutil.rmtree(settings.data_dir / prefix, ignore_errors=True)
    if not settings.storage_url:
        return
    bucket, base = _split(f"{settings.storage_url.rstrip('/')}/{prefix.strip('/')}/")
    client = s3_client(settings)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
