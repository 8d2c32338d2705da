"""Untrusted files in (archives, checkpoints, the formats accepted, local paths) and
atomic files out. Imports no other room."""
