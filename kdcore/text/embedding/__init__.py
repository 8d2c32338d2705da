"""Sentence-embedding distillation (task `embedding`): a sentence-transformers teacher
folder, a smaller encoder initialised from its layers, the teacher's embeddings stored
once, an MSE or cosine loss, fidelity on held-out text, and a folder that
sentence-transformers loads (docs/embeddings.md)."""
