"""Augmentations: seeded callables (token ids, special ids, rng) -> token ids that build the
second view; special tokens are preserved."""
