"""`Client`: the synchronous client. This example is run by the test suite
(tests/e2e/test_cli_and_client.py) against a real `kd serve`:

from kdservice.client import Client

spec = {                                   # or a path: "examples/digits_teacher.json"
    "kind": "train",
    "student": {"arch": "small_cnn"},
    "dataset": {"builtin": "digits", "image_size": 8},
    "training": {"epochs": 2},
}
with Client() as kd:                       # URL and key as in kdservice.client.config
    job = kd.submit(spec)
    for event in kd.events(job.id):          # SSE; reconnects with Last-Event-ID
        print(event.type, event.data)
    job = kd.wait(job.id, timeout_s=600)
    kd.download_outputs(job.id, "out/", names=["student.safetensors"])
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from kdservice.client._core import (
    PARTS_ABOVE,
    RETRY_STATUSES,
    STREAM_TIMEOUT,
    Deadline,
    Download,
    KnownJobs,
    SSEParser,
    UploadPlan,
    check,
    default_headers,
    file_sha256,
    load_spec,
    may_retry,
    new_idempotency_key,
    retry_delay,
    select_artifacts,
)
from kdservice.client.config import resolve
from kdservice.client.errors import ApiError, DigestMismatch
from kdservice.client.models import (
    Artifact,
    CredentialInfo,
    Event,
    EventPage,
    FileInfo,
    Job,
    JobPage,
    Validation,
)


class Client:
    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        backoff_cap_s: float = 20.0,
        transport: httpx.BaseTransport | None = None,
    ):
        target = resolve(base_url, api_key)
        self.base_url, self.api_key = target.url, target.api_key
        self.max_retries, self.backoff_s, self.backoff_cap_s = max_retries, backoff_s, backoff_cap_s
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=default_headers(self.api_key),
            timeout=timeout,
            transport=transport,
        )
        self._known = KnownJobs()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- transport ------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One API call, retried with backoff on 429/503 and, where safe, on connection
        errors; an error response raises ApiError."""
        headers = kwargs.setdefault("headers", {})
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError:
                if last or not may_retry(method, headers):
                    raise
                time.sleep(retry_delay(attempt, None, self.backoff_s, self.backoff_cap_s))
                continue
            if response.status_code in RETRY_STATUSES and not last:
                time.sleep(retry_delay(attempt, response, self.backoff_s, self.backoff_cap_s))
                continue
            return check(response)
        raise AssertionError("unreachable")

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    # -- jobs -----------------------------------------------------------------------

    def capabilities(self) -> dict[str, Any]:
        return dict(self._json("GET", "/v1/capabilities"))

    def validate(self, spec: dict[str, Any] | str | Path) -> Validation:
        return Validation.model_validate(
            self._json("POST", "/v1/jobs/validate", json=load_spec(spec))
        )

    def submit(self, spec: dict[str, Any] | str | Path, idempotency_key: str | None = None) -> Job:
        """Create a job. The idempotency key (one is made up if not given) makes retries
        of this call safe: the server answers a repeat with the job it already created."""
        key = idempotency_key or new_idempotency_key()
        body = self._json(
            "POST", "/v1/jobs", json=load_spec(spec), headers={"Idempotency-Key": key}
        )
        return Job.model_validate(body)

    def get(self, job_id: str) -> Job:
        """The job; asked again, with its ETag: unchanged, it comes back as 304 and the
        copy from the last read is returned. `job.poll_after_s` says when to ask again."""
        path = f"/v1/jobs/{job_id}"
        return self._known.read(
            job_id, self.request("GET", path, headers=self._known.headers(job_id))
        )

    def list_jobs(
        self,
        limit: int = 50,
        after: str | None = None,
        status: str | None = None,
        name: str | None = None,
    ) -> JobPage:
        params = {"limit": limit, "after": after, "status": status, "name": name}
        params = {k: v for k, v in params.items() if v is not None}
        return JobPage.model_validate(self._json("GET", "/v1/jobs", params=params))

    def jobs(self, status: str | None = None, name: str | None = None) -> Iterator[Job]:
        """Every job, newest first, following the pages."""
        after = None
        while True:
            page = self.list_jobs(200, after, status, name)
            yield from page.data
            if not page.has_more:
                return
            after = page.next_after

    def cancel(self, job_id: str) -> Job:
        return Job.model_validate(self._json("POST", f"/v1/jobs/{job_id}/cancel"))

    def retry(self, job_id: str, from_checkpoint: bool = False) -> Job:
        params = {"from_checkpoint": str(from_checkpoint).lower()}
        return Job.model_validate(self._json("POST", f"/v1/jobs/{job_id}/retry", params=params))

    def delete(self, job_id: str) -> None:
        self.request("DELETE", f"/v1/jobs/{job_id}")

    # -- events ---------------------------------------------------------------------

    def event_page(self, job_id: str, after: int = 0, limit: int = 100) -> EventPage:
        params = {"after": after, "limit": limit}
        return EventPage.model_validate(
            self._json("GET", f"/v1/jobs/{job_id}/events", params=params)
        )

    def events(self, job_id: str, after: int = 0) -> Iterator[Event]:
        """The job's events from `after` on, live, ending with its terminal status event.
        A dropped connection is resumed with Last-Event-ID: no event is lost or repeated."""
        return self._events(job_id, after, None)

    def _events(self, job_id: str, after: int, deadline: Deadline | None) -> Iterator[Event]:
        last, failures = after, 0
        while True:
            parser = SSEParser()
            try:
                with self._http.stream(
                    "GET",
                    f"/v1/jobs/{job_id}/events/stream",
                    headers={"Last-Event-ID": str(last), "Accept": "text/event-stream"},
                    timeout=deadline.stream_timeout() if deadline else STREAM_TIMEOUT,
                ) as response:
                    if response.status_code in RETRY_STATUSES:
                        raise httpx.RemoteProtocolError("busy")
                    check(response)
                    for line in response.iter_lines():
                        if deadline is not None:
                            deadline.check()  # heartbeats arrive even on a silent job
                        event = parser.feed(line)
                        if event is None or event.seq <= last:
                            continue
                        last, failures = event.seq, 0
                        yield event
                        if event.is_terminal:
                            return
            except httpx.TransportError:
                if deadline is not None:
                    deadline.check()  # a read cut short by the deadline ends here
                if failures >= self.max_retries:
                    raise
            # the stream ended or broke before the terminal event: reconnect
            delay = retry_delay(failures, None, self.backoff_s, self.backoff_cap_s)
            time.sleep(deadline.bounded(delay) if deadline else delay)
            failures += 1

    def wait(
        self,
        job_id: str,
        timeout_s: float | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> Job:
        """Block until the job ends (following its event stream); returns the final job.
        Raises WaitTimeout after `timeout_s`, whether or not events arrive."""
        deadline = None if timeout_s is None else Deadline(job_id, timeout_s)
        job = self.get(job_id)
        if job.done:
            return job
        for event in self._events(job_id, 0, deadline):
            if on_event is not None:
                on_event(event)
        return self.get(job_id)

    # -- files and artifacts --------------------------------------------------------

    def upload(
        self,
        path: str | Path,
        purpose: str = "checkpoint",
        on_progress: Callable[[int, int], None] | None = None,
        reuse: bool = False,
    ) -> FileInfo:
        """Upload a file: in one request up to PARTS_ABOVE bytes, else in parts
        (`upload_in_parts`: resumable). `reuse`: if the service already has a file of
        this content and purpose (find_file), return it and send nothing."""
        path = Path(path)
        if reuse and (found := self.find_file(path, purpose)) is not None:
            return found
        if path.stat().st_size > PARTS_ABOVE:
            return self.upload_in_parts(path, purpose, on_progress)
        with open(path, "rb") as fh:
            body = self._json(
                "POST",
                "/v1/files",
                files={"file": (path.name, fh, "application/octet-stream")},
                data={"purpose": purpose},
            )
        return FileInfo.model_validate(body)

    def upload_in_parts(
        self,
        path: str | Path,
        purpose: str = "checkpoint",
        on_progress: Callable[[int, int], None] | None = None,
        state_dir: str | Path | None = None,
    ) -> FileInfo:
        """Send a file in parts (/v1/uploads) and resume an earlier, interrupted attempt
        at the same file: its upload id is kept in `state_dir` (default
        ~/.cache/kd/uploads) under the file's sha256, and the parts the service already
        holds with the right sha256 are not sent again. The service checks the whole
        file's sha256 before it becomes a file. `on_progress(bytes_done, bytes_total)`
        after each part."""
        plan = UploadPlan.for_file(Path(path), Path(state_dir) if state_dir else None)
        upload = self._resumable(plan, purpose)
        for number, chunk, done in plan.parts(upload):
            if chunk is not None:
                self.request(
                    "PUT",
                    f"/v1/uploads/{upload['id']}/parts/{number}",
                    content=chunk,
                    headers={"Content-Type": "application/octet-stream"},
                )
            if on_progress is not None:
                on_progress(done, plan.size)
        # assembling and checking gigabytes takes the service a while: no read timeout
        info = self._json("POST", f"/v1/uploads/{upload['id']}/complete", timeout=None)
        plan.forget()
        return FileInfo.model_validate(info)

    def _resumable(self, plan: UploadPlan, purpose: str) -> dict[str, Any]:
        """The upload an earlier attempt left for this file, else a new one."""
        known = plan.known_upload()
        if known is not None:
            try:
                return dict(self._json("GET", f"/v1/uploads/{known}"))
            except ApiError as exc:
                if exc.status != 404:  # 404: expired or completed; start again
                    raise
        upload = dict(self._json("POST", "/v1/uploads", json=plan.declaration(purpose)))
        plan.remember(upload["id"])
        return upload

    def files(
        self, limit: int = 50, purpose: str | None = None, sha256: str | None = None
    ) -> list[FileInfo]:
        """The newest uploaded files; `sha256`: only copies of that content."""
        params = {"limit": limit, "purpose": purpose, "sha256": sha256}
        body = self._json(
            "GET", "/v1/files", params={k: v for k, v in params.items() if v is not None}
        )
        return [FileInfo.model_validate(f) for f in body["data"]]

    def find_file(self, path: str | Path, purpose: str = "checkpoint") -> FileInfo | None:
        """An uploaded file with the same content (sha256) as `path` and this purpose,
        or None: what `upload(..., reuse=True)` reuses."""
        sha = file_sha256(path)
        found = self.files(1, purpose, sha)
        return found[0] if found else None

    def delete_file(self, file_id: str) -> None:
        """Delete an uploaded file (409 while an active job uses it)."""
        self.request("DELETE", f"/v1/files/{file_id}")

    def put_credential(self, name: str, value: str) -> CredentialInfo:
        """Store (or replace) a secret for teacher endpoints under `name`; a spec names it
        in teacher.endpoint.credential. The service never returns the value."""
        body = self._json("PUT", f"/v1/credentials/{name}", json={"value": value})
        return CredentialInfo.model_validate(body)

    def credentials(self) -> list[CredentialInfo]:
        """This tenant's stored credentials: names and dates only."""
        body = self._json("GET", "/v1/credentials")
        return [CredentialInfo.model_validate(c) for c in body["data"]]

    def delete_credential(self, name: str) -> None:
        """Delete a credential (409 while an active job names it)."""
        self.request("DELETE", f"/v1/credentials/{name}")

    def artifacts(self, job_id: str) -> list[Artifact]:
        body = self._json("GET", f"/v1/jobs/{job_id}/artifacts")
        return [Artifact.model_validate(a) for a in body]

    def download(self, artifact: Artifact, dest: str | Path) -> Path:
        """Download an artifact to `dest` (a file, or a folder to put it in). Resumes a
        `.part` left by an interrupted download; checks the sha256 before finishing."""
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / artifact.name
        for fresh_start in (False, True):
            job = Download(dest, artifact.sha256)
            if fresh_start:
                job.part.unlink(missing_ok=True)
            resumed = bool(job.request_headers())
            for attempt in range(self.max_retries + 1):
                try:
                    with (
                        self._http.stream(
                            "GET", artifact.download_url, headers=job.request_headers()
                        ) as response,
                        job.open(response) as fh,
                    ):
                        for chunk in response.iter_bytes():
                            fh.write(chunk)
                    break
                except httpx.TransportError:
                    if attempt == self.max_retries:
                        raise
                    time.sleep(retry_delay(attempt, None, self.backoff_s, self.backoff_cap_s))
            try:
                return job.finish()
            except DigestMismatch:
                if not resumed or fresh_start:
                    raise
                # the kept .part was not a prefix of this file: download it whole once more
        raise AssertionError("unreachable")

    def download_outputs(
        self, job_id: str, dest_dir: str | Path, names: list[str] | None = None
    ) -> list[Path]:
        """Download a job's artifacts (all, or those named) into `dest_dir`."""
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        chosen = select_artifacts(job_id, self.artifacts(job_id), names)
        return [self.download(a, dest_dir / a.name) for a in chosen]
