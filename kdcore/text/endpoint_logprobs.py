"""Token-level KD from a teacher behind an OpenAI-compatible server
(`teacher.endpoint.logprobs: k`): the server's top-k log-probabilities at every position
of each training row become the teacher store (kdcore.text.teacher_store), which the job
then trains from as it would from stored outputs, and publishes as `teacher_outputs.zip`.

Each row is one completions request with the row's token ids as the prompt, `echo`,
`logprobs: k`, `max_tokens: 1` and vLLM's `return_tokens_as_token_ids` (tokens come back
as `token_id:N`, so no token text has to be looked up): the prompt logprobs give the
distribution of tokens 1..L-1, the one generated token's the distribution after the
last. Rows are written into the store's arrays (memory maps, which a killed process
leaves written) as the answers arrive and marked in `answered.npy`, so a resumed or
retried job asks only the rest; the description is written last.

Before any row, one request checks the tokenizer: the server's tokens for the first
row's text must be the job's (a server with another tokenizer would score ids that mean
other words)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from kdcore.engine.callbacks import Callbacks
from kdcore.errors import DataError
from kdcore.spec import EndpointSpec
from kdcore.text.endpoint import Budget, EndpointError, ask_all, open_client, post_json
from kdcore.text.rows import TextRows
from kdcore.text.teacher_store import (
    IDS,
    META,
    PAD,
    TOKENIZER,
    TOKENS,
    VALUES,
    TeacherOutputs,
    bytes_per_token,
    complete_store,
    encode_values,
    open_store,
    pack_ids,
    row_tokens,
    store_meta,
)
from kdcore.text.tokens import TextTokenizer

ANSWERED = "answered.npy"  # one byte per row: 1 once its outputs are in the arrays
ROUTE = "/completions"
ROW_BLOCK = 4096


def _token_id(token: Any, vocab: int) -> int:
    """`token_id:N` (vLLM's return_tokens_as_token_ids) as N, within the vocabulary."""
    text = str(token)
    if not text.startswith("token_id:") or not text[9:].isdigit():
        raise EndpointError(
            "the endpoint names tokens as text, not token_id:N: it must support "
            "return_tokens_as_token_ids (vLLM's OpenAI server does)"
        )
    found = int(text[9:])
    if found >= vocab:
        raise EndpointError(f"the endpoint names token {found}, beyond the vocabulary of {vocab}")
    return found


def _logprobs(reply: Any) -> dict[str, Any]:
    try:
        found = reply["choices"][0]["logprobs"]
        if isinstance(found["tokens"], list) and isinstance(found["top_logprobs"], list):
            return dict(found)
    except (KeyError, IndexError, TypeError):
        pass
    raise EndpointError("the endpoint's reply has no choices[0].logprobs (tokens, top_logprobs)")


def _row_outputs(reply: Any, length: int, k: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, log-probabilities), (length, k) each, largest first: position t holds the
    distribution of the token after it (the prompt's top_logprobs[t + 1]; the last
    position's is the generated token's)."""
    tops = _logprobs(reply)["top_logprobs"]
    if len(tops) < length + 1:
        raise EndpointError(
            f"the endpoint gave logprobs for {len(tops)} positions of a {length}-token "
            "prompt; it must echo the prompt's (echo with logprobs)"
        )
    ids = np.empty((length, k), dtype=np.int64)
    values = np.empty((length, k), dtype=np.float32)
    for t in range(length):
        entry = tops[t + 1]
        if not isinstance(entry, dict) or len(entry) < k:
            given = len(entry) if isinstance(entry, dict) else 0
            raise EndpointError(f"the endpoint gave {given} logprobs at a position, not {k}")
        best = sorted(((float(v), _token_id(s, vocab)) for s, v in entry.items()), reverse=True)
        values[t] = [v for v, _ in best[:k]]
        ids[t] = [i for _, i in best[:k]]
    if not np.isfinite(values).all() or (values > 1e-3).any():
        raise EndpointError("the endpoint's logprobs are not log-probabilities (finite, <= 0)")
    return ids, values


def _check_tokenizer(
    endpoint: EndpointSpec, client: Any, text: str, tokenizer: TextTokenizer
) -> None:
    """The server's tokens for `text` are ours (a leading BOS it adds aside)."""
    body = {
        "model": endpoint.model,
        "prompt": text,
        "max_tokens": 1,
        "temperature": 0.0,
        "echo": True,
        "logprobs": 1,
        "return_tokens_as_token_ids": True,
    }
    reply = post_json(client, endpoint, ROUTE, body, Budget(endpoint.retries + 1))
    theirs = [_token_id(t, 1 << 31) for t in _logprobs(reply)["tokens"]]
    ours = tokenizer.encode(text)
    if theirs[: len(ours)] != ours and theirs[1 : len(ours) + 1] != ours:
        raise DataError(
            f"the endpoint's model tokenizes the job's text differently (its first ids "
            f"{theirs[:8]}, the job's {ours[:8]}): token-level KD from its logprobs needs "
            "the student's tokenizer to be the server model's; give the student that "
            "tokenizer, or distil from its answers (method sequence, no logprobs)"
        )


def _arrays(folder: Path, meta: dict[str, Any]) -> tuple[np.memmap, ...]:
    """The store's arrays and the answered marks: reopened where an earlier attempt
    began them for this same description, else created."""
    n, length, k = meta["rows"], meta["seq_len"], meta["k"]
    id_bytes = -(-k * meta["id_bits"] // 8)
    value_width = (bytes_per_token(k, meta["vocab_size"]) - id_bytes) // 2
    shapes = {
        TOKENS: (np.int32, (n, length)),
        IDS: (np.uint8, (n, length, id_bytes)),
        VALUES: (np.float16, (n, length, value_width)),
        ANSWERED: (np.uint8, (n,)),
    }
    begun = folder / "begun.json"
    fmt = np.lib.format
    if begun.exists() and json.loads(begun.read_text()) == meta:
        return tuple(fmt.open_memmap(folder / name, "r+") for name in shapes)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    arrays = tuple(
        fmt.open_memmap(folder / name, "w+", dtype, shape)
        for name, (dtype, shape) in shapes.items()
    )
    begun.write_text(json.dumps(meta))
    return arrays


def endpoint_store(
    folder: Path,
    endpoint: EndpointSpec,
    train: TextRows,
    tokenizer: TextTokenizer,
    callbacks: Callbacks,
) -> TeacherOutputs:
    """The server's top-k over every training row, as a teacher store in `folder`."""
    k = int(endpoint.logprobs or 0)
    vocab = tokenizer.vocab_size
    meta = store_meta(len(train), train.seq_len, k, vocab, tokenizer)
    found = complete_store(folder, meta)
    if found is not None:
        return found
    tokens, ids, values, answered = _arrays(folder, meta)
    for first in range(0, len(train), ROW_BLOCK):  # in blocks: a large set never whole
        last = min(first + ROW_BLOCK, len(train))
        tokens[first:last] = row_tokens(train, first, last)
    todo = [int(i) for i in np.flatnonzero(answered == 0)]
    with open_client(endpoint) as client:
        if todo:
            first = tokens[todo[0]]
            _check_tokenizer(
                endpoint, client, tokenizer.decode(first[first != PAD].tolist()), tokenizer
            )

        def body_of(i: int) -> dict[str, Any]:
            row = tokens[i]
            return {
                "model": endpoint.model,
                "prompt": row[row != PAD].tolist(),
                "max_tokens": 1,
                "temperature": 0.0,
                "echo": True,
                "logprobs": k,
                "return_tokens_as_token_ids": True,
            }

        def keep(i: int, reply: Any) -> None:
            length = int((tokens[i] != PAD).sum())
            row_ids, row_values = _row_outputs(reply, length, k, vocab)
            pad = train.seq_len - length  # past the row's end: masked; its last position
            row_ids = np.concatenate([row_ids, np.repeat(row_ids[-1:], pad, 0)])
            row_values = np.concatenate([row_values, np.repeat(row_values[-1:], pad, 0)])
            ids[i] = pack_ids(row_ids, meta["id_bits"])
            values[i] = encode_values(row_values)
            answered[i] = 1

        ask_all(
            endpoint,
            client,
            ROUTE,
            todo,
            body_of,
            keep,
            (len(train) - len(todo), len(train), "rows", f"{folder.name}/"),
            callbacks,
        )
    for array in (tokens, ids, values, answered):
        array.flush()
    tokenizer.tok.save(str(folder / TOKENIZER))
    (folder / META).write_text(json.dumps(meta, indent=1))  # last: the store is complete
    return open_store(folder, folder)
