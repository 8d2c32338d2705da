"""API keys: random 256-bit tokens, stored as sha256 hashes, shown once."""

from __future__ import annotations

import hashlib
import secrets

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


def tenant_for_key(session: Session, key: str) -> Tenant | None:
    row = session.scalar(
        select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    )
    return session.get(Tenant, row.tenant_id) if row else None


def list_keys(session: Session) -> list[tuple[ApiKey, Tenant]]:
    rows = session.execute(
        select(ApiKey, Tenant)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .order_by(ApiKey.created_at)
    )
    return [(k, t) for k, t in rows]


def revoke_key(session: Session, key_id: str) -> bool:
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    return True


def any_key(session: Session) -> bool:
    return session.scalar(select(ApiKey.id).limit(1)) is not None
