"""`AsyncClient`: the same calls as `Client`, for asyncio programs.

async with AsyncClient() as kd:
    job = await kd.submit(spec)
    async for event in kd.events(job.id):
        ...
    job = await kd.wait(job.id)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx

from kdservice.client._core import (
    PARTS_ABOVE,
    RETRY_STATUSES,
    STREAM_TIMEOUT,
    Download,
    KnownJobs,
    SSEParser,
    UploadPlan,
    default_headers,
    file_sha256,
    load_spec,
    may_retry,
    new_idempotency_key,
    retry_delay,
    select_artifacts,
)
from kdservice.client.config import resolve
from kdservice.client.errors import ApiError, DigestMismatch, WaitTimeout
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


async def _check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise ApiError.from_response(
            response.status_code, await response.aread(), response.reason_phrase
        )
    return response


class AsyncClient:
    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        backoff_cap_s: float = 20.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        target = resolve(base_url, api_key)
        self.base_url, self.api_key = target.url, target.api_key
        self.max_retries, self.backoff_s, self.backoff_cap_s = max_retries, backoff_s, backoff_cap_s
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=default_headers(self.api_key),
            timeout=timeout,
            transport=transport,
        )
        self._known = KnownJobs()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _sleep(self, attempt: int, response: httpx.Response | None) -> None:
        await asyncio.sleep(retry_delay(attempt, response, self.backoff_s, self.backoff_cap_s))

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = kwargs.setdefault("headers", {})
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError:
                if last or not may_retry(method, headers):
                    raise
                await self._sleep(attempt, None)
                continue
            if response.status_code in RETRY_STATUSES and not last:
                await self._sleep(attempt, response)
                continue
            return await _check(response)
        raise AssertionError("unreachable")

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return (await self.request(method, path, **kwargs)).json()

    async def capabilities(self) -> dict[str, Any]:
        return dict(await self._json("GET", "/v1/capabilities"))

    async def validate(self, spec: dict[str, Any] | str | Path) -> Validation:
        body = await self._json("POST", "/v1/jobs/validate", json=load_spec(spec))
        return Validation.model_validate(body)

    async def submit(
        self, spec: dict[str, Any] | str | Path, idempotency_key: str | None = None
    ) -> Job:
        key = idempotency_key or new_idempotency_key()
        body = await self._json(
            "POST", "/v1/jobs", json=load_spec(spec), headers={"Idempotency-Key": key}
        )
        return Job.model_validate(body)

    async def get(self, job_id: str) -> Job:
        """As Client.get: conditional, a 304 returns the copy from the last read."""
        headers = self._known.headers(job_id)
        response = await self.request("GET", f"/v1/jobs/{job_id}", headers=headers)
        return self._known.read(job_id, response)

    async def list_jobs(
        self,
        limit: int = 50,
        after: str | None = None,
        status: str | None = None,
        name: str | None = None,
    ) -> JobPage:
        params = {"limit": limit, "after": after, "status": status, "name": name}
        params = {k: v for k, v in params.items() if v is not None}
        return JobPage.model_validate(await self._json("GET", "/v1/jobs", params=params))

    async def jobs(self, status: str | None = None, name: str | None = None) -> AsyncIterator[Job]:
        """Every job, newest first, following the pages."""
        after = None
        while True:
            page = await self.list_jobs(200, after, status, name)
            for job in page.data:
                yield job
            if not page.has_more:
                return
            after = page.next_after

    async def cancel(self, job_id: str) -> Job:
        return Job.model_validate(await self._json("POST", f"/v1/jobs/{job_id}/cancel"))

    async def retry(self, job_id: str, from_checkpoint: bool = False) -> Job:
        params = {"from_checkpoint": str(from_checkpoint).lower()}
        body = await self._json("POST", f"/v1/jobs/{job_id}/retry", params=params)
        return Job.model_validate(body)

    async def delete(self, job_id: str) -> None:
        await self.request("DELETE", f"/v1/jobs/{job_id}")

    async def event_page(self, job_id: str, after: int = 0, limit: int = 100) -> EventPage:
        params = {"after": after, "limit": limit}
        body = await self._json("GET", f"/v1/jobs/{job_id}/events", params=params)
        return EventPage.model_validate(body)

    async def events(self, job_id: str, after: int = 0) -> AsyncIterator[Event]:
        """As Client.events: live, resumed with Last-Event-ID, ends after the terminal event."""
        last, failures = after, 0
        while True:
            parser = SSEParser()
            try:
                async with self._http.stream(
                    "GET",
                    f"/v1/jobs/{job_id}/events/stream",
                    headers={"Last-Event-ID": str(last), "Accept": "text/event-stream"},
                    timeout=STREAM_TIMEOUT,
                ) as response:
                    if response.status_code in RETRY_STATUSES:
                        raise httpx.RemoteProtocolError("busy")
                    await _check(response)
                    async for line in response.aiter_lines():
                        event = parser.feed(line)
                        if event is None or event.seq <= last:
                            continue
                        last, failures = event.seq, 0
                        yield event
                        if event.is_terminal:
                            return
            except httpx.TransportError:
                if failures >= self.max_retries:
                    raise
            await self._sleep(failures, None)
            failures += 1

    async def wait(
        self,
        job_id: str,
        timeout_s: float | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> Job:
        async def follow() -> Job:
            job = await self.get(job_id)
            if job.done:
                return job
            async for event in self.events(job_id):
                if on_event is not None:
                    on_event(event)
            return await self.get(job_id)

        try:
            return await asyncio.wait_for(follow(), timeout_s)
        except TimeoutError:
            raise WaitTimeout(f"job {job_id} did not end within {timeout_s} s") from None

    async def upload(
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
        if reuse and (found := await self.find_file(path, purpose)) is not None:
            return found
        if path.stat().st_size > PARTS_ABOVE:
            return await self.upload_in_parts(path, purpose, on_progress)
        content = await asyncio.to_thread(path.read_bytes)
        body = await self._json(
            "POST",
            "/v1/files",
            files={"file": (path.name, content, "application/octet-stream")},
            data={"purpose": purpose},
        )
        return FileInfo.model_validate(body)

    async def upload_in_parts(
        self,
        path: str | Path,
        purpose: str = "checkpoint",
        on_progress: Callable[[int, int], None] | None = None,
        state_dir: str | Path | None = None,
    ) -> FileInfo:
        """As Client.upload_in_parts: resumes an interrupted upload of the same file."""
        folder = Path(state_dir) if state_dir else None
        plan = await asyncio.to_thread(UploadPlan.for_file, Path(path), folder)
        upload = await self._resumable(plan, purpose)
        parts = plan.parts(upload)
        while (item := await asyncio.to_thread(next, parts, None)) is not None:
            number, chunk, done = item
            if chunk is not None:
                await self.request(
                    "PUT",
                    f"/v1/uploads/{upload['id']}/parts/{number}",
                    content=chunk,
                    headers={"Content-Type": "application/octet-stream"},
                )
            if on_progress is not None:
                on_progress(done, plan.size)
        # assembling and checking gigabytes takes the service a while: no read timeout
        info = await self._json("POST", f"/v1/uploads/{upload['id']}/complete", timeout=None)
        plan.forget()
        return FileInfo.model_validate(info)

    async def _resumable(self, plan: UploadPlan, purpose: str) -> dict[str, Any]:
        known = plan.known_upload()
        if known is not None:
            try:
                return dict(await self._json("GET", f"/v1/uploads/{known}"))
            except ApiError as exc:
                if exc.status != 404:  # 404: expired or completed; start again
                    raise
        upload = dict(await self._json("POST", "/v1/uploads", json=plan.declaration(purpose)))
        plan.remember(upload["id"])
        return upload

    async def files(
        self, limit: int = 50, purpose: str | None = None, sha256: str | None = None
    ) -> list[FileInfo]:
        """The newest uploaded files; `sha256`: only copies of that content."""
        params = {"limit": limit, "purpose": purpose, "sha256": sha256}
        body = await self._json(
            "GET", "/v1/files", params={k: v for k, v in params.items() if v is not None}
        )
        return [FileInfo.model_validate(f) for f in body["data"]]

    async def find_file(self, path: str | Path, purpose: str = "checkpoint") -> FileInfo | None:
        """An uploaded file with the same content (sha256) as `path` and this purpose,
        or None: what `upload(..., reuse=True)` reuses."""
        sha = await asyncio.to_thread(file_sha256, path)
        found = await self.files(1, purpose, sha)
        return found[0] if found else None

    async def delete_file(self, file_id: str) -> None:
        """Delete an uploaded file (409 while an active job uses it)."""
        await self.request("DELETE", f"/v1/files/{file_id}")

    async def put_credential(self, name: str, value: str) -> CredentialInfo:
        """Store (or replace) a secret for teacher endpoints under `name`; a spec names it
        in teacher.endpoint.credential. The service never returns the value."""
        body = await self._json("PUT", f"/v1/credentials/{name}", json={"value": value})
        return CredentialInfo.model_validate(body)

    async def credentials(self) -> list[CredentialInfo]:
        """This tenant's stored credentials: names and dates only."""
        body = await self._json("GET", "/v1/credentials")
        return [CredentialInfo.model_validate(c) for c in body["data"]]

    async def delete_credential(self, name: str) -> None:
        """Delete a credential (409 while an active job names it)."""
        await self.request("DELETE", f"/v1/credentials/{name}")

    async def artifacts(self, job_id: str) -> list[Artifact]:
        body = await self._json("GET", f"/v1/jobs/{job_id}/artifacts")
        return [Artifact.model_validate(a) for a in body]

    async def download(self, artifact: Artifact, dest: str | Path) -> Path:
        """As Client.download: Range resume of a `.part`, sha256 checked."""
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
                    async with self._http.stream(
                        "GET", artifact.download_url, headers=job.request_headers()
                    ) as response:
                        await _check(response)
                        with job.open(response) as fh:
                            async for chunk in response.aiter_bytes():
                                fh.write(chunk)
                    break
                except httpx.TransportError:
                    if attempt == self.max_retries:
                        raise
                    await self._sleep(attempt, None)
            try:
                return await asyncio.to_thread(job.finish)
            except DigestMismatch:
                if not resumed or fresh_start:
                    raise
        raise AssertionError("unreachable")

    async def download_outputs(
        self, job_id: str, dest_dir: str | Path, names: list[str] | None = None
    ) -> list[Path]:
        """As Client.download_outputs: a job's artifacts (all, or those named)."""
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        chosen = select_artifacts(job_id, await self.artifacts(job_id), names)
        return [await self.download(a, dest_dir / a.name) for a in chosen]


__all__ = ["AsyncClient"]
