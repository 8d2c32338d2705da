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
        tokenizer: Path | None = None,
        token_text: bool = False,
    ):
        from transformers import GPT2LMHeadModel

        from kdcore.text.tokens import load_tokenizer

        self.model = GPT2LMHeadModel.from_pretrained(str(folder)).eval()
        self.tok = load_tokenizer(folder / "tokenizer.json")
        # a server whose model came with another tokenizer (it encodes text prompts with
        # it), or one that names tokens as text whatever it is asked (no token_id:N)
        self.text_tok = load_tokenizer(tokenizer) if tokenizer else self.tok
        self.token_text = token_text
        self.scored_rows = 0  # echo + logprobs requests answered
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

    def logprobs(self, prompt: list[int] | str, k: int) -> dict:
        """vLLM's answer to echo + logprobs + max_tokens 1: the prompt's tokens and the
        generated one, each position's top-k (and the token itself, as vLLM adds it)."""
        ids = list(prompt) if isinstance(prompt, list) else self.text_tok.encode(prompt)
        with self.model_lock, torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([ids])).logits[0]
        logp = logits.float().log_softmax(-1)
        nxt = int(logp[-1].argmax())
        tokens = [*ids, nxt]

        def name(i: int) -> str:
            return self.tok.decode([i]) if self.token_text else f"token_id:{i}"

        tops: list[dict | None] = [None]
        for t in range(1, len(tokens)):
            values, top = logp[t - 1].topk(k)
            entry = {name(int(i)): float(v) for v, i in zip(values, top, strict=True)}
            entry.setdefault(name(tokens[t]), float(logp[t - 1, tokens[t]]))
            tops.append(entry)
        return {"tokens": [name(i) for i in tokens], "top_logprobs": tops}

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
                if body.get("echo") and body.get("logprobs"):
                    scored = server.logprobs(body["prompt"], int(body["logprobs"]))
                    with server.lock:
                        server.scored_rows += 1
                    reply = {"choices": [{"index": 0, "text": "", "logprobs": scored}]}
                    return self._send(200, reply)
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
