"""A teacher behind an OpenAI-compatible server (`teacher.endpoint`): sequence-level KD,
as the hosted services distil. The server answers every training prompt (its text, as
the job's tokenizer decodes it); each answer is appended to `generations.jsonl` the
moment it arrives, with its prompt's index, so a resumed or retried job asks only the
prompts not yet answered. Requests run `concurrency` at a time; a request that timed
out, could not connect, or got 429 or a 5xx is retried with exponential backoff
(Retry-After honoured up to 30 s); every attempt counts against `max_requests`. When
the budget is spent or a request fails for good, the job fails saying how many prompts
were answered, and keeps them.

The API key is read from the file `api_key_file` names (a mounted secret; kdcore reads
no environment variables) and sent only as the Authorization header: it is never
written to a file, a message or a report."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kdcore.engine.callbacks import Callbacks, Progress
from kdcore.errors import Cancelled, KDError
from kdcore.spec import EndpointSpec
from kdcore.text.generate import GENERATIONS

MAX_RESPONSE_BYTES = 1 << 20  # an answer of a few thousand tokens is far below this
MAX_RETRY_AFTER_S = 30.0
MAX_KEY_BYTES = 4096


class EndpointError(KDError):
    """The endpoint could not answer (budget spent, a refusal, a broken reply)."""


class Budget:
    def __init__(self, limit: int):
        self.limit, self.spent, self.lock = limit, 0, threading.Lock()

    def take(self) -> None:
        with self.lock:
            if self.spent >= self.limit:
                raise EndpointError(f"the endpoint's request budget ({self.limit}) is spent")
            self.spent += 1


def _answered(path: Path) -> dict[int, str]:
    """The answers already stored; a torn last line (a kill mid-write) is dropped."""
    if not path.exists():
        return {}
    done, lines = {}, []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            done[int(record["index"])] = str(record["completion"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            break
        lines.append(line)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return done


def _body(endpoint: EndpointSpec, prompt: str, temperature: float, max_tokens: int) -> dict:
    body: dict[str, Any] = {
        "model": endpoint.model,
        "max_tokens": max_tokens,
        "temperature": temperature,
    }
    if endpoint.api == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


def _text(endpoint: EndpointSpec, reply: Any) -> str:
    try:
        choice = reply["choices"][0]
        text = choice["message"]["content"] if endpoint.api == "chat" else choice["text"]
    except (KeyError, IndexError, TypeError):
        text = None
    if not isinstance(text, str):
        field = "message.content" if endpoint.api == "chat" else "text"
        raise EndpointError(f"the endpoint's reply has no choices[0].{field}")
    return text


def _retry_after(headers: Any, attempt: int) -> float:
    try:
        given = float(headers.get("retry-after", ""))
        return min(max(given, 0.0), MAX_RETRY_AFTER_S)
    except ValueError:
        return min(0.25 * 2**attempt, 8.0) * (1 + random.random() / 4)  # noqa: S311 (jitter)


@dataclass(frozen=True)
class _Target:
    """Where requests go: the url, or (endpoint.address) that address with the url's
    host kept for the Host header and the TLS name, so a second DNS lookup cannot send
    the job somewhere the service's egress check did not approve."""

    base: str
    headers: dict[str, str]
    extensions: dict[str, Any]

    @classmethod
    def of(cls, endpoint: EndpointSpec) -> _Target:
        if endpoint.address is None:
            return cls(endpoint.url, {}, {})
        parts = urlsplit(endpoint.url)
        host = parts.hostname or ""
        default = 443 if parts.scheme == "https" else 80
        port = parts.port or default
        literal = f"[{endpoint.address}]" if ":" in endpoint.address else endpoint.address
        named = f"[{host}]" if ":" in host else host
        host_header = named if port == default else f"{named}:{port}"
        base = f"{parts.scheme}://{literal}:{port}{parts.path}"
        tls = {"sni_hostname": host} if parts.scheme == "https" else {}
        return cls(base, {"Host": host_header}, tls)


def post_json(client: Any, endpoint: EndpointSpec, route: str, body: dict, budget: Budget) -> Any:
    """One request's JSON reply, retried on timeouts, lost connections, 429 and 5xx."""
    import httpx

    target = _Target.of(endpoint)
    for attempt in range(endpoint.retries + 1):
        budget.take()
        last = attempt == endpoint.retries
        try:
            with client.stream(
                "POST",
                target.base + route,
                json=body,
                headers=target.headers,
                extensions=target.extensions,
            ) as response:
                data = b""
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > MAX_RESPONSE_BYTES:
                        raise EndpointError(
                            f"the endpoint's reply is over {MAX_RESPONSE_BYTES} bytes"
                        )
                status, headers = response.status_code, response.headers
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            if last:
                raise EndpointError(
                    f"the endpoint did not answer ({type(exc).__name__}) after "
                    f"{endpoint.retries + 1} tries"
                ) from None
            time.sleep(_retry_after({}, attempt))
            continue
        if status == 429 or status >= 500:
            if last:
                raise EndpointError(f"the endpoint answered {status} after {attempt + 1} tries")
            time.sleep(_retry_after(headers, attempt))
            continue
        if status != 200:
            raise EndpointError(f"the endpoint refused the request: HTTP {status}{_why(data)}")
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise EndpointError("the endpoint's reply is not JSON") from None
    raise AssertionError("unreachable")


def _why(data: bytes) -> str:
    """The server's own short message (OpenAI's error.message), printable, cut short."""
    try:
        message = str(json.loads(data)["error"]["message"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        return ""
    clean = "".join(c for c in message if c.isprintable())[:200]
    return f" ({clean})" if clean else ""


def _read_key(path: Path) -> str:
    """The key in the file, stripped; refused (never quoted) unless it is one short line
    of printable ASCII, as a header value must be."""
    try:
        if path.stat().st_size > MAX_KEY_BYTES:
            raise EndpointError(f"the API key file {path.name} is over {MAX_KEY_BYTES} bytes")
        key = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        raise EndpointError(f"the API key file {path.name} cannot be read as ASCII") from None
    if not key or not all(33 <= ord(c) < 127 for c in key):
        raise EndpointError(f"the API key file {path.name} holds no single-line key")
    return key


def open_client(endpoint: EndpointSpec) -> Any:
    """An HTTP client holding the key (read from api_key_file) in its headers."""
    import httpx

    if endpoint.credential is not None and not endpoint.api_key_file:
        raise EndpointError(
            f"credential {endpoint.credential!r} names a key stored in the service, which "
            "hands it to its jobs; kdcore alone reads the key from api_key_file"
        )
    headers = {}
    if endpoint.api_key_file:
        headers["Authorization"] = f"Bearer {_read_key(Path(endpoint.api_key_file))}"
    limits = httpx.Limits(max_connections=endpoint.concurrency)
    return httpx.Client(
        timeout=endpoint.timeout_s, headers=headers, limits=limits, follow_redirects=False
    )


def ask_all(
    endpoint: EndpointSpec,
    client: Any,
    route: str,
    todo: list[int],
    body_of: Callable[[int], dict],
    keep: Callable[[int, Any], None],
    progress: tuple[int, int, str, str],
    callbacks: Callbacks,
) -> None:
    """Ask for every index of `todo`, `concurrency` requests at a time, each reply handed
    to `keep` (in this thread) as it arrives. `progress`: (already done, total, what is
    asked for, where answers are kept). A failure ends it saying how many were answered."""
    done, total, unit, kept_in = progress
    budget = Budget(endpoint.max_requests)
    start = time.perf_counter()
    with ThreadPoolExecutor(endpoint.concurrency) as pool:
        pending: dict[Future[Any], int] = {}
        queue = iter(todo)

        def submit() -> None:
            i = next(queue, None)
            if i is not None:
                pending[pool.submit(post_json, client, endpoint, route, body_of(i), budget)] = i

        for _ in range(endpoint.concurrency):
            submit()
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    i = pending.pop(future)
                    keep(i, future.result())  # an EndpointError ends the job here
                    done += 1
                    elapsed = time.perf_counter() - start
                    callbacks.on_step(
                        Progress("generate", 1, 1, done, total, 0.0, elapsed_s=elapsed)
                    )
                    if callbacks.should_stop():
                        raise Cancelled(f"stopped while generating, {done} answered")
                    submit()
        except EndpointError as exc:
            raise EndpointError(
                f"{exc}: {done} of {total} {unit} answered, kept in {kept_in} (a resumed or "
                "retried job asks only the rest)"
            ) from None
        finally:
            for future in pending:
                future.cancel()


def ask_endpoint(
    endpoint: EndpointSpec,
    prompts: list[str],
    out_dir: Path,
    temperature: float,
    max_tokens: int,
    callbacks: Callbacks,
) -> list[str]:
    """The endpoint's answer to every prompt, resumed from generations.jsonl."""
    path = out_dir / GENERATIONS
    done = _answered(path)
    todo = [i for i in range(len(prompts)) if i not in done]
    route = "/chat/completions" if endpoint.api == "chat" else "/completions"
    with open_client(endpoint) as client, open(path, "a", encoding="utf-8") as fh:

        def keep(i: int, reply: Any) -> None:
            answer = _text(endpoint, reply)
            fh.write(json.dumps({"index": i, "prompt": prompts[i], "completion": answer}) + "\n")
            fh.flush()
            done[i] = answer

        ask_all(
            endpoint,
            client,
            route,
            todo,
            lambda i: _body(endpoint, prompts[i], temperature, max_tokens),
            keep,
            (len(done), len(prompts), "prompts", GENERATIONS),
            callbacks,
        )
    return [done[i] for i in range(len(prompts))]
