"""Instruction tokens out of the pooled vector (NV-Embed, arXiv 2405.17428, §3.2: "we mask out
the instruction tokens" in the mean after the latent-attention layer, in training and use).

`model.mask_instruction: true` makes pooling ignore a row's leading prompt tokens wherever a row
starts with one of the encoder's prompts (the training data's instruction prefix, `Corpus.prompts`,
e.g. 'Instruct: {task}\\nQuery: '); the tokens still attend and are attended to, they are only left
out of the pooled mean (or are never the last token). Rows without a prompt (documents,
positives) pool as before. The prompt's tokens are found by their ids: the prompt tokenized as the
model tokenizes a text, less its trailing special tokens, so a leading BOS/[CLS] counts as part of
the prompt, as sentence-transformers counts it under `include_prompt: false` (which an export then
declares, so `SentenceTransformer.encode(text, prompt_name='query')` pools the same tokens).
"""

from __future__ import annotations

import torch
from torch import Tensor


def prompt_token_ids(tokenizer, prompts: dict[str, str]) -> list[Tensor]:
    """Each prompt's token ids as they open a tokenized text (trailing specials dropped)."""
    special = set(tokenizer.all_special_ids)
    sequences = []
    for text in dict.fromkeys(prompts.values()):
        ids = tokenizer(text.rstrip())["input_ids"]
        while ids and ids[-1] in special:
            ids = ids[:-1]
        if ids:
            sequences.append(torch.tensor(ids))
    return sequences


def without_prompts(input_ids: Tensor, attention_mask: Tensor, prompts: list[Tensor]) -> Tensor:
    """The pooling mask: `attention_mask` with each row's leading prompt tokens zeroed (right or
    left padding). A row that is nothing but a prompt keeps its tokens (an empty mean is NaN)."""
    n, length = attention_mask.shape
    start = attention_mask.long().argmax(1)  # first real token of each row
    relative = torch.arange(length, device=input_ids.device)[None, :] - start[:, None]  # (N, L)
    keep = attention_mask.clone()
    for ids in prompts:
        k = len(ids)
        if k >= length:
            continue
        window = start[:, None] + torch.arange(k, device=input_ids.device)  # (N, k)
        opens = input_ids.gather(1, window.clamp(max=length - 1)) == ids.to(input_ids.device)
        matched = opens.all(1) & (attention_mask.sum(1) > k)  # (N,)
        drop = matched[:, None] & (relative >= 0) & (relative < k)
        keep = keep.masked_fill(drop, 0)
    return keep


def pooling_mask(encoder, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """What `encoder` pools over: the attention mask, less the prompt tokens under
    `mask_instruction` (the prompts' ids tokenized once per set of prompts)."""
    if not encoder.mask_instruction or not encoder.prompts:
        return attention_mask
    key = tuple(sorted(encoder.prompts.items()))
    cached = getattr(encoder, "_prompt_ids", None)
    if cached is None or cached[0] != key:
        cached = (key, prompt_token_ids(encoder.tokenizer, encoder.prompts))
        encoder._prompt_ids = cached
    return without_prompts(input_ids, attention_mask, cached[1])
