"""`augmentation=span_mask`: Mirror-BERT's random span masking (Liu et al., arXiv 2104.08027, §2).

A text-level augmentation: it edits the raw string of the second view, which the collator then
tokenizes with the training truncation.
"""

from __future__ import annotations

import random

from csetrain.config import ConfigError


class SpanMask:
    """Replace a random `span`-character substring of the text with the literal `mask_text`.

    Applied to the `positive` view only (the collator builds it from the anchor's raw text; the
    anchor itself is never masked); texts shorter than `min_chars` (30) are left unchanged. The
    span is 5 *characters*, not tokens, and the literal text is "[MASK]" whatever the tokenizer
    (the authors note RoBERTa's mask token would be `<mask>`, and that "[MASK]" did not hurt).

    The start is drawn uniformly from [0, len - span), the official range (so the span never
    ends on the last character). Deviations from the official `erase_and_mask`: it splits the
    string at the *first occurrence* of the sampled substring (an earlier position when that
    substring repeats) and joins `left + " [MASK] " + right` with spaces; we cut at the sampled
    position and insert "[MASK]" without spaces. With a WordPiece tokenizer (BERT), which splits
    the "[MASK]" special token out of the text anyway, both give the same tokens
    (tests/test_span_mask.py); with byte-level BPE (RoBERTa) the spaces would change tokens.
    """

    level = "text"

    def __init__(self, span: int = 5, min_chars: int = 30, mask_text: str = "[MASK]") -> None:
        if span < 1:
            raise ConfigError(f"augmentation.span={span}: choose a positive number of characters")
        if min_chars <= span:
            raise ConfigError(
                f"augmentation.min_chars={min_chars} must exceed augmentation.span={span}"
            )
        self.span, self.min_chars, self.mask_text = span, min_chars, mask_text

    def __call__(self, text: str, rng: random.Random) -> str:
        if len(text) < self.min_chars:
            return text
        start = rng.randrange(len(text) - self.span)
        return text[:start] + self.mask_text + text[start + self.span :]
