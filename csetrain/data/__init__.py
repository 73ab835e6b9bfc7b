"""Training data: corpus readers, tokenize-once caching, step-indexed batching and collation."""
