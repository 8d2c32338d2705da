"""A tenant's credentials for teacher endpoints: write-only secrets.

A client stores a secret under a name (PUT /v1/credentials/{name}) and names it in a
spec (`teacher.endpoint.credential`); nothing ever returns it. It is kept encrypted at
rest with AES-256-GCM under the service's key (settings `secrets_key`), with the
tenant's id and the name as associated data, so a row copied to another tenant or name
does not decrypt. A worker decrypts it just before the training starts and hands it to
the job as a key file (mode 0600 in a folder of mode 0700) that is removed when the
attempt ends: it is never in the job's spec, its events, logs, report or folder.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import ACTIVE, Credential, Job, new_id, utcnow
from app.errors import Conflict, Invalid, NotFound
from app.settings import Settings, secrets_key_bytes

MAX_SECRET_BYTES = 4096  # an API key or token; kdcore reads at most this from a key file
MAX_CREDENTIALS = 100  # per tenant
KEY_FILE = "secrets.key"  # under data_dir, when settings.secrets_key is empty


class SecretsKeyError(RuntimeError):
    """The service's key is missing or malformed (an operator's error, not a client's)."""


def _key(settings: Settings) -> bytes:
    """The 32-byte key: settings.secrets_key, or (development) one generated once in
    data_dir/secrets.key, readable by the service's user only."""
    given = settings.secrets_key.get_secret_value().strip()
    if not given:
        if settings.environment == "production":
            raise SecretsKeyError("production needs KD_SECRETS_KEY to store credentials")
        given = _generated_key(settings.data_dir / KEY_FILE)
    try:
        return secrets_key_bytes(given)
    except ValueError as exc:  # a generated key file someone edited
        raise SecretsKeyError(str(exc)) from None


def _generated_key(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):  # two processes at once: the first one wins
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(base64.b64encode(secrets.token_bytes(32)).decode())
    return path.read_text().strip()


def _aad(tenant_id: str, name: str) -> bytes:
    return f"kdservice credential\0{tenant_id}\0{name}".encode()


def encrypt(settings: Settings, tenant_id: str, name: str, value: str) -> bytes:
    nonce = secrets.token_bytes(12)
    return nonce + AESGCM(_key(settings)).encrypt(nonce, value.encode(), _aad(tenant_id, name))


def decrypt(settings: Settings, row: Credential) -> str:
    try:
        plain = AESGCM(_key(settings)).decrypt(
            row.ciphertext[:12], row.ciphertext[12:], _aad(row.tenant_id, row.name)
        )
    except InvalidTag:
        raise SecretsKeyError(
            f"credential {row.name!r} does not decrypt with this process's KD_SECRETS_KEY "
            "(every API process and worker needs the same key)"
        ) from None
    return plain.decode()


def check_value(value: str) -> None:
    """A secret is one line of printable ASCII (it goes in an HTTP header)."""
    if not value or len(value.encode()) > MAX_SECRET_BYTES:
        raise Invalid([("/value", f"a secret is 1 to {MAX_SECRET_BYTES} bytes")])
    if not all(33 <= ord(c) < 127 for c in value):
        raise Invalid([("/value", "a secret is one line of printable ASCII, no spaces")])


def find(session: Session, tenant_id: str, name: str) -> Credential | None:
    return session.scalar(
        select(Credential).where(Credential.tenant_id == tenant_id, Credential.name == name)
    )


def put(session: Session, settings: Settings, tenant_id: str, name: str, value: str) -> bool:
    """Store (or replace) the secret; True if it was new."""
    check_value(value)
    try:
        ciphertext = encrypt(settings, tenant_id, name, value)
    except SecretsKeyError as exc:
        raise Conflict(str(exc)) from None
    row = find(session, tenant_id, name)
    if row is not None:
        row.ciphertext, row.updated_at = ciphertext, utcnow()
        return False
    if len(list_names(session, tenant_id)) >= MAX_CREDENTIALS:
        raise Conflict(f"a tenant keeps at most {MAX_CREDENTIALS} credentials; delete one")
    row = Credential(id=new_id("cred"), tenant_id=tenant_id, name=name, ciphertext=ciphertext)
    session.add(row)
    session.flush()
    return True


def list_names(session: Session, tenant_id: str) -> list[Credential]:
    return list(
        session.scalars(
            select(Credential).where(Credential.tenant_id == tenant_id).order_by(Credential.name)
        )
    )


def get(session: Session, tenant_id: str, name: str) -> Credential:
    row = find(session, tenant_id, name)
    if row is None:
        raise NotFound("credential", name)
    return row


def named_by(spec: dict) -> str | None:
    endpoint = (spec.get("teacher") or {}).get("endpoint") or {}
    return endpoint.get("credential")


def delete(session: Session, tenant_id: str, name: str) -> None:
    row = get(session, tenant_id, name)
    active = session.execute(
        select(Job.id, Job.spec).where(Job.tenant_id == tenant_id, Job.status.in_(ACTIVE))
    )
    for job_id, spec in active:
        if named_by(spec) == name:
            raise Conflict(f"credential {name!r} is used by active job {job_id}")
    session.delete(row)


@contextlib.contextmanager
def key_file(settings: Settings, secret: str | None) -> Iterator[Path | None]:
    """The secret in a file only this user can read, for one attempt; removed after."""
    if secret is None:
        yield None
        return
    folder = settings.run_secrets_dir
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    path = folder / f"{secrets.token_hex(16)}.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secret)
        yield path
    finally:
        path.unlink(missing_ok=True)
