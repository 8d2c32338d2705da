"""A corpus with structure a tiny language model can learn (a small probabilistic
grammar: each subject prefers some verbs, each verb some objects), a BPE tokenizer
trained on it by the `tokenizers` library, and tiny GPT-2 and BERT configs."""

from __future__ import annotations

import json
import random
from pathlib import Path

SUBJECTS = ["the cat", "a dog", "the old man", "my sister", "the robot", "a small bird"]
VERBS = ["sees", "likes", "eats", "builds", "finds", "follows", "paints", "carries"]
OBJECTS = ["the ball", "a red apple", "the house", "some bread", "the river", "a blue kite"]
ENDINGS = [".", " today.", " again.", " at night."]

GPT2_TEACHER = {"n_layer": 4, "n_embd": 64, "n_head": 4, "n_positions": 128}
GPT2_STUDENT = {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 128}
BERT_TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}


def sentence(rng: random.Random) -> str:
    s = rng.randrange(len(SUBJECTS))
    v = (s * 3 + rng.choice([0, 0, 0, 1, 2])) % len(VERBS)  # subject -> mostly one verb
    o = (v * 5 + rng.choice([0, 0, 1])) % len(OBJECTS)  # verb -> mostly one object
    return f"{SUBJECTS[s]} {VERBS[v]} {OBJECTS[o]}{rng.choice(ENDINGS)}"


def write_corpus(path: Path, documents: int = 300, seed: int = 0) -> Path:
    rng = random.Random(seed)
    docs = [" ".join(sentence(rng) for _ in range(rng.randint(3, 6))) for _ in range(documents)]
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def write_prompts(path: Path, count: int = 200, seed: int = 1) -> Path:
    """JSONL {"prompt", "completion"}: the subject, then the rest of the sentence."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(count):
            words = sentence(rng).split(" ")
            cut = 2 if words[0] in ("the", "a", "my") else 1
            prompt = " ".join(words[:cut])
            fh.write(
                json.dumps({"prompt": prompt, "completion": " " + " ".join(words[cut:])}) + "\n"
            )
    return path


def write_labelled(path: Path, count: int = 300, seed: int = 2) -> Path:
    """JSONL {"text", "label"}: the label is which object the sentence ends with, in
    three groups (a model has to read the end of the sentence)."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(count):
            text = sentence(rng)
            label = next(i for i, o in enumerate(OBJECTS) if o in text) % 3
            fh.write(json.dumps({"text": text, "label": label}) + "\n")
    return path


def train_tokenizer(corpus: Path, path: Path, vocab_size: int = 300) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train([str(corpus)], trainer)
    tok.save(str(path))
    return path
