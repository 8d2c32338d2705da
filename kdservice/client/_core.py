"""What the sync and async clients share: retry policy, spec loading, the SSE parser,
the conditional reads of jobs, and the bookkeeping of a resumable, digest-checked
download."""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from kdservice.client.errors import ApiError, DigestMismatch, WaitTimeout
from kdservice.client.models import Artifact, Event, Job

RETRY_STATUSES = frozenset({429, 503})
STREAM_TIMEOUT = httpx.Timeout(10.0, read=60.0)  # the server sends a heartbeat every 15 s
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
CHUNK = 1 << 20


def default_headers(api_key: str | None) -> dict[str, str]:
    """The headers every request of either client carries."""
    headers = {"User-Agent": "kdservice-client/0.1"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def retry_delay(attempt: int, response: httpx.Response | None, base: float, cap: float) -> float:
    """Exponential backoff with full jitter; a server's Retry-After (seconds) wins."""
    if response is not None:
        after = response.headers.get("retry-after", "")
        if after.isdigit():
            return min(float(after), cap)
    return random.uniform(0, min(cap, base * 2**attempt))


def may_retry(method: str, headers: dict[str, str]) -> bool:
    """Connection errors are retried only where a repeat cannot do the work twice."""
    return method in IDEMPOTENT or "Idempotency-Key" in headers


def check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise ApiError.from_response(response.status_code, response.read(), response.reason_phrase)
    return response


def load_spec(spec: dict[str, Any] | str | Path) -> dict[str, Any]:
    """A spec as a dict, or a path to a .json / .yaml / .yml file."""
    if isinstance(spec, dict):
        return spec
    path = Path(spec)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a job spec is a JSON/YAML object")
    return data


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file's content, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class Deadline:
    """`wait(timeout_s=...)`'s deadline, enforced while the stream is silent too: each
    stream read may last no longer than the time left."""

    def __init__(self, job_id: str, timeout_s: float):
        self.job_id, self.timeout_s = job_id, timeout_s
        self.at = time.monotonic() + timeout_s

    def left(self) -> float:
        return self.at - time.monotonic()

    def check(self) -> None:
        if self.left() <= 0:
            raise WaitTimeout(f"job {self.job_id} did not end within {self.timeout_s} s")

    def stream_timeout(self) -> httpx.Timeout:
        self.check()
        return httpx.Timeout(10.0, read=max(0.05, min(60.0, self.left())))

    def bounded(self, delay: float) -> float:
        return max(0.0, min(delay, self.left()))


def select_artifacts(
    job_id: str, artifacts: list[Artifact], names: list[str] | None
) -> list[Artifact]:
    """The artifacts `download_outputs` fetches: all, or those named (all must exist)."""
    chosen = [a for a in artifacts if names is None or a.name in names]
    if names is not None and len(chosen) < len(set(names)):
        have = sorted(a.name for a in artifacts)
        raise ApiError(404, "Not Found", f"job {job_id} has no {sorted(names)}; it has {have}", [])
    return chosen


def new_idempotency_key() -> str:
    return f"kdclient-{uuid.uuid4()}"


class KnownJobs:
    """The jobs this client read last, with their ETags: a repeated `get` sends
    `If-None-Match`, and a 304 (the job has not changed) costs the server no rendering
    and the client no parsing."""

    def __init__(self, size: int = 256):
        self.size = size
        self._jobs: dict[str, tuple[str, Job]] = {}

    def headers(self, job_id: str) -> dict[str, str]:
        known = self._jobs.get(job_id)
        return {"If-None-Match": known[0]} if known else {}

    def read(self, job_id: str, response: httpx.Response) -> Job:
        if response.status_code == 304 and job_id in self._jobs:
            return self._jobs[job_id][1]
        job = Job.model_validate(response.json())
        etag = response.headers.get("etag")
        if etag:
            if len(self._jobs) >= self.size:
                self._jobs.pop(next(iter(self._jobs)))  # the oldest entry
            self._jobs[job_id] = (etag, job)
        return job


class SSEParser:
    """Turns `text/event-stream` lines into events (the server sends id, event, data)."""

    def __init__(self) -> None:
        self._id: str | None = None
        self._type = "message"
        self._data: list[str] = []

    def feed(self, line: str) -> Event | None:
        if line == "":
            event = None
            if self._data and self._id is not None and self._id.isdigit():
                event = Event(
                    seq=int(self._id), type=self._type, data=json.loads("\n".join(self._data))
                )
            self._id, self._type, self._data = None, "message", []
            return event
        if line.startswith(":"):
            return None  # heartbeat comment
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "id":
            self._id = value
        elif field == "event":
            self._type = value
        elif field == "data":
            self._data.append(value)
        return None


class Download:
    """One artifact into `dest`: bytes go to `dest.part`; a later attempt resumes it with
    a Range request (If-Range on the ETag, so a changed file restarts); at the end the
    sha256 of the whole file is checked before `dest` appears."""

    def __init__(self, dest: Path, sha256: str):
        self.dest, self.sha256 = dest, sha256
        self.part = dest.with_name(dest.name + ".part")

    def request_headers(self) -> dict[str, str]:
        have = self.part.stat().st_size if self.part.exists() else 0
        if have == 0:
            return {}
        return {"Range": f"bytes={have}-", "If-Range": f'"{self.sha256}"'}

    def open(self, response: httpx.Response) -> Any:
        check(response)
        if response.status_code == 206:
            return open(self.part, "ab")
        return open(self.part, "wb")  # 200: the whole file, from the start

    def finish(self) -> Path:
        h = hashlib.sha256()
        with open(self.part, "rb") as fh:
            for chunk in iter(lambda: fh.read(CHUNK), b""):
                h.update(chunk)
        if h.hexdigest() != self.sha256:
            self.part.unlink()
            raise DigestMismatch(
                f"{self.dest.name}: sha256 {h.hexdigest()} != {self.sha256} announced by the server"
            )
        self.part.replace(self.dest)
        return self.dest


PARTS_ABOVE = 64 * 1024**2  # `upload` sends larger files in parts (/v1/uploads)


class UploadPlan:
    """What resuming an upload in parts needs to know about a local file: its size,
    its sha256, and the upload an earlier attempt started (a small JSON file named by
    the sha256 in the state folder)."""

    def __init__(self, path: Path, size: int, sha256: str, state: Path):
        self.path, self.size, self.sha256, self.state = path, size, sha256, state

    @classmethod
    def for_file(cls, path: Path, state_dir: Path | None = None) -> UploadPlan:
        folder = (
            state_dir
            or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kd" / "uploads"
        )
        sha = file_sha256(path)
        return cls(path, path.stat().st_size, sha, folder / f"{sha}.json")

    def declaration(self, purpose: str) -> dict[str, Any]:
        """POST /v1/uploads's body."""
        name, size, sha = self.path.name, self.size, self.sha256
        return {"filename": name, "purpose": purpose, "bytes": size, "sha256": sha}

    def parts(self, upload: dict[str, Any]) -> Iterator[tuple[int, bytes | None, int]]:
        """(number, its bytes, or None where the service holds them already with the
        same sha256, bytes done once it is sent) for each part of `upload`, in order."""
        part = upload["part_bytes"]
        held = {p["number"]: p["sha256"] for p in upload["received"]}
        done = 0
        with open(self.path, "rb") as fh:
            for number in range(1, upload["parts"] + 1):
                fh.seek((number - 1) * part)
                chunk = fh.read(part)
                done += len(chunk)
                same = held.get(number) == hashlib.sha256(chunk).hexdigest()
                yield number, None if same else chunk, done

    def known_upload(self) -> str | None:
        try:
            upload_id = json.loads(self.state.read_text()).get("id")
        except (OSError, ValueError, AttributeError):
            return None
        return upload_id if isinstance(upload_id, str) and upload_id.startswith("upl_") else None

    def remember(self, upload_id: str) -> None:
        self.state.parent.mkdir(parents=True, exist_ok=True)
        self.state.write_text(json.dumps({"id": upload_id, "path": str(self.path)}))

    def forget(self) -> None:
        self.state.unlink(missing_ok=True)
