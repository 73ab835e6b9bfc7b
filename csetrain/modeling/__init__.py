"""Sentence encoders: a transformer backbone, a pooler and an optional MLP head."""
