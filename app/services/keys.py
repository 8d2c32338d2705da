"""API keys: random 256-bit tokens, stored as sha256 hashes, shown once."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import ApiKey, Tenant, new_id, utcnow

KEY_PREFIX = "kd_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(id=new_id("ten"), name=name, webhook_secret=secrets.token_urlsafe(32))
        session.add(tenant)
        session.flush()
    return tenant


def create_key(session: Session, tenant_name: str, key: str | None = None) -> tuple[ApiKey, str]:
    """Create a key for the tenant (created if new). Returns the row and the plain key,
    which is not stored anywhere."""
    tenant = get_or_create_tenant(session, tenant_name)
    plain = key or KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(id=new_id("key"), tenant_id=tenant.id, key_hash=hash_key(plain), prefix=plain[:10])
    session.add(row)
    session.flush()
    return row, plain


def ensure_key(session: Session, tenant_name: str, key: str) -> None:
    if session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key))) is None:
        create_key(session, tenant_name, key)


@dataclass(frozen=True)
class Caller:
    """The tenant behind an API key, as the routes need it (a plain value: it outlives
    the session that read it, so it can be cached)."""

    id: str
    name: str
    webhook_secret: str


# (database, key hash) -> (expiry on the monotonic clock, caller); per process
_CALLERS: dict[tuple[str, str], tuple[float, Caller]] = {}


def cached_caller(key: str, cache_key: str, ttl_s: float) -> Caller | None:
    """The caller of `key` if this process looked it up less than `ttl_s` ago: no I/O."""
    if ttl_s <= 0:
        return None
    hit = _CALLERS.get((cache_key, hash_key(key)))
    return hit[1] if hit is not None and hit[0] > time.monotonic() else None


def tenant_for_key(
    session: Session, key: str, cache_key: str = "", ttl_s: float = 0.0
) -> Caller | None:
    """The caller of an active key, in one query; with `ttl_s` > 0 the answer is reused
    for that long (a key revoked by another process stops working within `ttl_s`; one
    revoked in this process at once)."""
    hit = cached_caller(key, cache_key, ttl_s)
    if hit is not None:
        return hit
    digest = hash_key(key)
    now = time.monotonic()
    row = session.execute(
        select(Tenant.id, Tenant.name, Tenant.webhook_secret)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
    ).first()
    if row is None:
        _CALLERS.pop((cache_key, digest), None)
        return None
    caller = Caller(*row)
    if ttl_s > 0:
        _CALLERS[(cache_key, digest)] = (now + ttl_s, caller)
    return caller


def list_keys(session: Session) -> list[tuple[ApiKey, Tenant]]:
    rows = session.execute(
        select(ApiKey, Tenant)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .order_by(ApiKey.created_at)
    )
    return [(k, t) for k, t in rows]


def revoke_key(session: Session, key_id: str) -> bool:
    _CALLERS.clear()  # this process forgets at once; others within their cache time
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    return True


def any_key(session: Session) -> bool:
    return session.scalar(select(ApiKey.id).limit(1)) is not None
