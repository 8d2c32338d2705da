"""A small OpenAI-compatible server on loopback, serving a model trained in the test
(not a mock of the client): POST /v1/completions and /v1/chat/completions answer with
the model's own completion. It counts the requests each prompt got, checks a Bearer
key when given one, can answer the first requests with 503 (retry tests), and can
be slow (`delay_s`, for a kill while it answers)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch


class OpenAIServer:
    def __init__(
        self,
        folder: Path,
        key: str | None = None,
        fail_first: int = 0,
        pad_reply: int = 0,
        delay_s: float = 0.0,
    ):
        from transformers import GPT2LMHeadModel

        from kdcore.text.tokens import load_tokenizer

        self.model = GPT2LMHeadModel.from_pretrained(str(folder)).eval()
        self.tok = load_tokenizer(folder / "tokenizer.json")
        self.key, self.fail_first, self.pad_reply = key, fail_first, pad_reply
        self.delay_s = delay_s  # a slow server: each answer takes at least this long
        self.asked: Counter[str] = Counter()  # prompt -> requests that reached the model
        self.requests = 0  # every request, refused ones included
        self.generated = 0
        self.headers_seen: list[dict[str, str]] = []
        self.lock, self.model_lock = threading.Lock(), threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> OpenAIServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def complete(self, prompt: str, max_tokens: int, temperature: float) -> str:
        from kdcore.text.generate import _batch

        ids = self.tok.encode(prompt) or [self.tok.eos_id]
        with self.model_lock, torch.inference_mode():
            self.generated += 1
            torch.manual_seed(self.generated)  # each sample its own draw
            out = _batch(
                self.model, [ids], self.tok, temperature, max_tokens, torch.device("cpu"), True
            )
        return self.tok.decode(out[0])

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests += 1
                    n = server.requests
                    server.headers_seen.append(dict(self.headers))
                if server.key and self.headers.get("Authorization") != f"Bearer {server.key}":
                    return self._send(401, {"error": {"message": "Incorrect API key provided"}})
                if n <= server.fail_first:
                    return self._send(503, {"error": {"message": "overloaded"}})
                chat = self.path.endswith("/chat/completions")
                prompt = body["messages"][-1]["content"] if chat else body["prompt"]
                with server.lock:
                    server.asked[prompt] += 1
                text = server.complete(prompt, body["max_tokens"], body["temperature"])
                time.sleep(server.delay_s)
                choice = (
                    {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
                )
                reply = {"object": "text_completion", "choices": [{"index": 0, **choice}]}
                if server.pad_reply:  # a hostile or broken server's oversized answer
                    reply["padding"] = "x" * server.pad_reply
                self._send(200, reply)

        return Handler
