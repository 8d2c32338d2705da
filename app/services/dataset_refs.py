"""Datasets by reference: `dataset.path` naming data the service can already reach, so
a large set never passes through an upload.

    s3://<bucket>/<tenant>/<key or prefix>  a bucket the operator allows
                                            (KD_DATASET_BUCKETS), under the tenant's
                                            own prefix: its name
    local://<root>/<path>                   a folder the operator configures
                                            (KD_DATASET_ROOTS name=/abs/path), in the
                                            tenant's own subfolder <root>/<tenant>/

Checked at submission: the bucket and prefix, that something is there; a local path
must resolve inside the tenant's folder (a link out of it is refused). Before a run the
worker copies an S3 prefix into its dataset cache (KD_DATA_DIR/dataset-cache, bounded by
KD_DATASET_CACHE_BYTES: least recently used prefixes go first; objects already there
with the same ETag are not fetched again) and hands kdcore the folder. An object key
that would leave the cache folder (`..`, an absolute key) refuses the whole dataset.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

from app import storage
from app.settings import Settings

SCHEMES = ("s3://", "local://")
TENANT_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MANIFEST = ".kd-manifest.json"


class DatasetRefError(Exception):
    """A dataset reference that cannot be used; the message says why."""


def is_reference(path: str | None) -> bool:
    return bool(path) and str(path).startswith(SCHEMES)


def _safe_parts(text: str, what: str) -> PurePosixPath:
    rel = PurePosixPath(text)
    if rel.is_absolute() or any(p in ("", ".", "..") for p in text.split("/") if p != ""):
        raise DatasetRefError(f"{what} {text!r} must be a plain relative path (no '..')")
    if any(ord(c) < 32 for c in text) or "\\" in text:
        raise DatasetRefError(f"{what} {text!r} holds control characters or backslashes")
    return rel


def _tenant_prefix(tenant: str) -> str:
    if not TENANT_PREFIX.match(tenant):
        raise DatasetRefError(f"tenant name {tenant!r} cannot serve as a dataset prefix")
    return tenant


def _roots(settings: Settings) -> dict[str, Path]:
    roots = {}
    for item in filter(None, (x.strip() for x in settings.dataset_roots.split(","))):
        name, _, folder = item.partition("=")
        roots[name.strip()] = Path(folder.strip())
    return roots


def _local(settings: Settings, tenant: str, ref: str) -> Path:
    name, _, rest = ref.removeprefix("local://").partition("/")
    roots = _roots(settings)
    if name not in roots:
        known = ", ".join(sorted(roots)) or "none are configured (KD_DATASET_ROOTS)"
        raise DatasetRefError(f"no dataset root {name!r}; roots: {known}")
    home = (roots[name] / _tenant_prefix(tenant)).resolve()
    path = (home / _safe_parts(rest, "path")).resolve() if rest else home
    if path != home and home not in path.parents:
        raise DatasetRefError(f"{ref} leaves the tenant's folder of root {name!r}")
    if not path.exists():
        raise DatasetRefError(f"{ref}: nothing there (looked in <root {name}>/{tenant}/)")
    return path


def _bucket_and_key(settings: Settings, tenant: str, ref: str) -> tuple[str, str]:
    bucket, _, key = ref.removeprefix("s3://").partition("/")
    allowed = {b.strip() for b in settings.dataset_buckets.split(",") if b.strip()}
    if bucket not in allowed:
        known = ", ".join(sorted(allowed)) or "none are allowed (KD_DATASET_BUCKETS)"
        raise DatasetRefError(f"bucket {bucket!r} is not one datasets are read from: {known}")
    prefix = _tenant_prefix(tenant) + "/"
    if not key.startswith(prefix):
        raise DatasetRefError(f"a tenant reads only its own prefix: s3://{bucket}/{prefix}...")
    _safe_parts(key.rstrip("/"), "key")
    return bucket, key


def _objects(settings: Settings, bucket: str, key: str) -> tuple[str, list[dict[str, Any]]]:
    """(the folder prefix or the single key, its objects: Key, Size, ETag)."""
    client = storage.s3_client(settings)
    if not key.endswith("/"):
        head = None
        try:
            head = client.head_object(Bucket=bucket, Key=key)
        except client.exceptions.ClientError:
            head = None
        if head is not None:
            return key, [{"Key": key, "Size": head["ContentLength"], "ETag": head["ETag"]}]
        key += "/"
    found: list[dict[str, Any]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
        found += page.get("Contents", [])
    return key, found


def problem(settings: Settings, tenant: str, ref: str) -> str | None:
    """Why `ref` cannot serve as this tenant's dataset; None if it can (submission)."""
    try:
        if ref.startswith("local://"):
            _local(settings, tenant, ref)
            return None
        bucket, key = _bucket_and_key(settings, tenant, ref)
        _, objects = _objects(settings, bucket, key)
    except DatasetRefError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 (the store refused or is unreachable)
        return f"cannot list {ref}: {type(exc).__name__}"
    return None if objects else f"{ref}: no objects there"


def local_path(settings: Settings, tenant: str, ref: str) -> Path:
    """A path on this host holding the dataset (the worker, before the run): the local
    folder itself, or the S3 objects copied into the bounded dataset cache."""
    if ref.startswith("local://"):
        return _local(settings, tenant, ref)
    bucket, key = _bucket_and_key(settings, tenant, ref)
    base, objects = _objects(settings, bucket, key)
    if not objects:
        raise DatasetRefError(f"{ref}: no objects there")
    total = sum(int(o["Size"]) for o in objects)
    if total > settings.dataset_cache_bytes:
        raise DatasetRefError(
            f"{ref} holds {total} bytes, over this worker's dataset cache "
            f"({settings.dataset_cache_bytes} bytes, KD_DATASET_CACHE_BYTES)"
        )
    cache = (settings.data_dir / "dataset-cache").resolve()
    single = not base.endswith("/")
    folder = cache / bucket / (str(PurePosixPath(base).parent) if single else base.rstrip("/"))
    _make_room(cache, total, folder, settings.dataset_cache_bytes)
    _fetch(settings, bucket, objects, folder, cache, base if not single else "")
    return folder / PurePosixPath(base).name if single else folder


def _fetch(
    settings: Settings,
    bucket: str,
    objects: list[dict[str, Any]],
    folder: Path,
    cache: Path,
    base: str,
) -> None:
    manifest_path = folder / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        manifest = {}
    client = storage.s3_client(settings)
    for obj in objects:
        rel = obj["Key"][len(base) :] if base else PurePosixPath(obj["Key"]).name
        _safe_parts(rel, "object key")  # a key with '..' would write outside the cache
        dest = (folder / rel).resolve()
        if cache not in dest.parents:
            raise DatasetRefError(f"object key {obj['Key']!r} leaves the dataset cache")
        if manifest.get(rel) == obj["ETag"] and dest.is_file():
            continue  # fetched before, unchanged
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        client.download_file(bucket, obj["Key"], str(tmp))
        tmp.replace(dest)
        manifest[rel] = obj["ETag"]
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(manifest))  # its mtime: when this set was last used


def _make_room(cache: Path, need: int, keep: Path, bound: int) -> None:
    """Delete cached datasets until `need` more bytes fit: each tenant (a set lives at
    <cache>/<bucket>/<tenant>/...) has an equal share, and the least recently used set of
    the tenant furthest over its share goes first (kdcore.io.eviction.evict_fairly), so
    one tenant's large sets never evict another's within its share."""
    from kdcore.io.eviction import evict_fairly

    sets: dict[Path, list[tuple[float, int, Path]]] = {}
    for manifest in cache.rglob(MANIFEST) if cache.exists() else []:
        folder = manifest.parent
        if folder == keep:
            continue
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        tenant = cache.joinpath(*folder.relative_to(cache).parts[:2])
        sets.setdefault(tenant, []).append((manifest.stat().st_mtime, size, folder))
    evict_fairly(sets, max(0, bound - need))
