"""Tokenizers for text jobs: a `tokenizer.json` of the `tokenizers` library (JSON parsed
in Rust: nothing in it runs), or, when none is given, bytes (256 tokens and an end of
text). Two tokenizers are the same when their vocabularies, merges, normalisers and
pre-tokenisers are: `identity` digests exactly that, so token-level distillation is
allowed only where the teacher's and the student's tokens mean the same (checked, not
assumed)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from kdcore.errors import DataError
from kdcore.models.ecosystems import MAX_TOKENIZER_BYTES

EOS_NAMES = ("<|endoftext|>", "</s>", "<eos>", "[SEP]", "<|end|>")
PAD_NAMES = ("<pad>", "[PAD]", "<|pad|>")
BYTES_EOS = "<|endoftext|>"


class TextTokenizer:
    """A tokenizers.Tokenizer with its end-of-text and padding ids."""

    def __init__(self, tokenizer: object, source: str):
        from tokenizers import Tokenizer

        assert isinstance(tokenizer, Tokenizer)
        # padding and truncation are the job's (seq_len, its own padding), never the
        # file's: a tokenizer.json padding every text to 10^9 tokens would make each
        # record a billion ids
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.tok, self.source = tokenizer, source
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        eos = next((vocab[n] for n in EOS_NAMES if n in vocab), None)
        if eos is None:
            raise DataError(
                f"the tokenizer ({source}) needs an end-of-text token: one of "
                + ", ".join(EOS_NAMES)
            )
        self.eos_id = eos
        self.eos_token = next(n for n in EOS_NAMES if n in vocab)
        self.pad_id = next((vocab[n] for n in PAD_NAMES if n in vocab), eos)
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self._identity: str | None = None

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Many texts at once (the tokenizers library spreads them over threads)."""
        return [list(e.ids) for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return str(self.tok.decode(ids, skip_special_tokens=True))

    def identity(self) -> str:
        """What decides the tokens: model (vocabulary, merges), normaliser,
        pre-tokeniser and added tokens; not padding or truncation settings. Computed
        once (the tokenizer's whole JSON is read)."""
        if self._identity is None:
            spec = json.loads(self.tok.to_str())
            parts = ("model", "normalizer", "pre_tokenizer", "added_tokens")
            keep = {k: spec.get(k) for k in parts}
            self._identity = hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()
        return self._identity

    def save(self, folder: Path) -> list[Path]:
        """tokenizer.json plus the two small files transformers' AutoTokenizer reads."""
        folder.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(folder / "tokenizer.json"))
        pad = self.tok.id_to_token(self.pad_id)
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": self.eos_token,
            "bos_token": self.eos_token,
            "pad_token": pad,
            "model_max_length": 1_000_000,
        }
        special = {"eos_token": self.eos_token, "bos_token": self.eos_token, "pad_token": pad}
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
        (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
        return [
            folder / n
            for n in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
        ]


def read_tokenizer(text: str, source: str) -> TextTokenizer:
    from tokenizers import Tokenizer

    if len(text) > MAX_TOKENIZER_BYTES:
        raise DataError(f"the tokenizer ({source}) is over {MAX_TOKENIZER_BYTES // 1024**2} MiB")
    try:
        return TextTokenizer(Tokenizer.from_str(text), source)
    except Exception as exc:  # the Rust parser raises its own Exception type
        if isinstance(exc, DataError):
            raise
        raise DataError(f"the tokenizer ({source}) is not a tokenizer.json: {exc}") from None


def load_tokenizer(path: Path) -> TextTokenizer:
    if path.stat().st_size > MAX_TOKENIZER_BYTES:
        raise DataError(f"{path.name} is over {MAX_TOKENIZER_BYTES // 1024**2} MiB")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path.name} is not UTF-8 JSON") from None
    return read_tokenizer(text, path.name)


def bytes_tokenizer() -> TextTokenizer:
    """Byte-level: each UTF-8 byte a token (GPT-2's byte alphabet), no merges, and an
    end of text: any text, no file, 257 tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([BYTES_EOS])
    return TextTokenizer(tok, "bytes")
