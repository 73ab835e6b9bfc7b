"""Prompts: named texts put before a sentence, applied and pooled as sentence-transformers does.

A model carries `prompts` ({name: text}) and `default_prompt_name`, saved in a folder's
config_sentence_transformers.json. `encode(texts, prompt=None)` applies the default prompt (as
`SentenceTransformer.encode` does without `prompt_name`); a name resolves to its text here, and
an unknown name is one line naming the model's prompts.

`include_prompt=False` (the Pooling module's flag; NV-Embed's "instruction tokens removed from
the mean") keeps the prompt tokens out of the pooled vector; the transformer still attends to
them. sentence-transformers counts the prompt by tokenizing it alone, minus a trailing special
token ([CLS] + prompt tokens for BERT), and zeroes that many leading positions of the pooling
mask. Inference here uses that rule exactly. Training rows come from the tokenized corpus, so a
row's prompt is found by its ids: a row that starts with a prompt's counted ids loses them.
Where a tokenizer splits a prompt differently alone than in context (a trailing space under
byte-level BPE), the two rules would differ; training refuses that (`check_trainable`).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from csetrain.config import ConfigError


def prompt_length(tokenizer, prompt: str, max_length: int | None = None) -> int:
    """Tokens sentence-transformers masks for `prompt`: its ids alone, less a trailing special."""
    if not prompt:
        return 0
    ids = tokenizer(prompt, truncation=max_length is not None, max_length=max_length)
    ids = ids["input_ids"]
    return len(ids) - (1 if ids and ids[-1] in tokenizer.all_special_ids else 0)


def exclude_prompt(mask: Tensor, length: int) -> Tensor:
    """sentence-transformers' Pooling._exclude_prompt_from_mask: zero the first `length` real
    positions of each row (after any left padding), on a copy."""
    if not length:
        return mask
    first_real = mask.to(torch.int32).argmax(dim=1)  # 0 under right padding
    positions = torch.arange(mask.shape[1], device=mask.device)[None]
    return mask.masked_fill(positions < (first_real + length)[:, None], 0)


def _counted_ids(encoder) -> list[list[int]]:
    """The counted ids of each non-empty prompt, longest first (cached per prompts dict)."""
    key = tuple(sorted(encoder.prompts.items()))
    cache = getattr(encoder, "_prompt_ids", None)
    if cache is None or cache[0] != key:
        texts = sorted({t for t in encoder.prompts.values() if t})
        counted = []
        for text in texts:
            ids = encoder.tokenizer(text)["input_ids"]
            counted.append(ids[: prompt_length(encoder.tokenizer, text)])
        cache = (key, sorted(counted, key=len, reverse=True))
        encoder._prompt_ids = cache
    return cache[1]


def detected_lengths(encoder, input_ids: Tensor, first_real: Tensor | None = None) -> Tensor:
    """(N,) prompt length of each row: that of the longest prompt its ids start with (at its
    first real token `first_real`, after any left padding; None: 0), else 0."""
    n, width = input_ids.shape
    lengths = torch.zeros(n, dtype=torch.long, device=input_ids.device)
    start = torch.zeros_like(lengths) if first_real is None else first_real.long()
    for ids in _counted_ids(encoder):
        if len(ids) > width:
            continue
        prefix = torch.tensor(ids, device=input_ids.device)
        window = (start[:, None] + torch.arange(len(ids), device=input_ids.device)).clamp(
            max=width - 1
        )
        opens = (input_ids.gather(1, window) == prefix).all(dim=1)
        hit = opens & (start + len(ids) <= width) & (lengths == 0)
        lengths[hit] = len(ids)
    return lengths


def pooling_mask(
    encoder, input_ids: Tensor, attention_mask: Tensor, length: int | None = None
) -> Tensor:
    """The mask pooling uses: the attention mask, without prompt tokens if include_prompt is off.
    `length`: the prompt every row carries (encode's rule); None: found per row by its ids."""
    if encoder.include_prompt or not encoder.prompts and length is None:
        return attention_mask
    if length is not None:
        return exclude_prompt(attention_mask, length)
    first_real = attention_mask.to(torch.int32).argmax(dim=1)  # 0 under right padding
    lengths = detected_lengths(encoder, input_ids, first_real)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)[None]
    return attention_mask.masked_fill(positions < (first_real + lengths)[:, None], 0)


def resolve(encoder, name: str | None, key: str = "eval.prompt_name") -> str | None:
    """The text of prompt `name`; None: None (the model's default then applies)."""
    if name is None:
        return None
    prompts = getattr(encoder, "prompts", {}) or {}
    if name not in prompts:
        raise ConfigError(
            f"{key}='{name}' is not a prompt of this model: choose one of {sorted(prompts)} "
            "(its config_sentence_transformers.json prompts) or null for the model's default"
        )
    return prompts[name]


def default_text(encoder) -> str:
    """What `encode` puts before a sentence when no prompt is asked for ('' without a default)."""
    name = getattr(encoder, "default_prompt_name", None)
    return (getattr(encoder, "prompts", {}) or {}).get(name, "") if name else ""


def corpus_default(prompts: dict[str, str]) -> str | None:
    """A training corpus's default prompt name: 'query' when its documents carried the same
    prompt as its queries (every training text had it, e.g. single-field data), so a plain
    encode matches training for any text; None when only queries had it (pairs, triplets):
    a default applies to every encode call, documents included, which training never saw."""
    query = prompts.get("query")
    return "query" if query and prompts.get("document") == query else None


def carry_prompts(encoder, prompts: dict[str, str]) -> None:
    """Give the encoder in training the prompts its training texts carried (a corpus's
    `prompts`), over any it had; then the corpus decides the default (a kept default could name
    a replaced prompt). Checked for include_prompt=False (`check_trainable`)."""
    if prompts:
        encoder.prompts = {**encoder.prompts, **prompts}
        encoder.default_prompt_name = corpus_default(prompts)
    check_trainable(encoder)


def check_trainable(encoder) -> None:
    """include_prompt=False in training finds prompts by ids: each prompt's counted ids must be
    how it tokenizes in front of a sentence, or training and inference would pool differently."""
    if encoder.include_prompt:
        return
    tokenizer = encoder.tokenizer
    for text in {t for t in encoder.prompts.values() if t}:
        counted = tokenizer(text)["input_ids"][: prompt_length(tokenizer, text)]
        in_context = tokenizer(text + "word")["input_ids"][: len(counted)]
        if counted != in_context:
            raise ConfigError(
                f"model.include_prompt=false: the tokenizer splits prompt {text!r} differently "
                "alone than before a sentence (a trailing space under byte-level BPE); end the "
                "prompt without it or keep model.include_prompt=true"
            )


def mteb_prompt(encoder, task_name: str, prompt_type) -> str | None:
    """The prompt for one of mteb's encode calls, in mteb's order for sentence-transformers
    models: '<task>-<type>', '<task>', then '<type>' ('query'/'document'), each if the model has
    it. None: the model's default applies."""
    kind = getattr(prompt_type, "value", prompt_type)
    prompts = getattr(encoder, "prompts", {}) or {}
    names = (f"{task_name}-{kind}", task_name, kind) if kind else (task_name,)
    for name in names:
        if name in prompts:
            return prompts[name]
    return None


def encode_with_prompts(
    encoder, texts, prompt_of: dict, name=None, batch_size=128, progress=False, embed=None
):
    """Vectors of `texts` (N, ...): a text in `prompt_of` starts with that prompt and is encoded
    with it (sentence-transformers' `prompt=`: an eval instruction), every other one with prompt
    `name` (None: the model's default). One encode call per distinct prompt."""
    prompt = resolve(encoder, name)
    extra = {"embed": embed} if embed is not None else {}
    if not prompt_of and prompt is None:  # any encoder with encode(texts, batch_size, progress)
        return encoder.encode(texts, batch_size, progress, **extra)
    groups: dict[tuple, list[int]] = {}  # (prompt, whether the texts hold it) -> rows
    for i, text in enumerate(texts):
        key = (prompt_of[text], True) if text in prompt_of else (prompt, False)
        groups.setdefault(key, []).append(i)
    out = None
    for (group_prompt, held), rows in groups.items():
        bare = [texts[i][len(group_prompt) :] if held else texts[i] for i in rows]
        vectors = encoder.encode(bare, batch_size, progress, prompt=group_prompt, **extra)
        out = vectors.new_empty(len(texts), *vectors.shape[1:]) if out is None else out
        out[rows] = vectors
    return out


def instructed(subsets: list, prefix: str) -> tuple[list, dict[str, str]]:
    """Pair subsets (`first`/`second` sentence lists) with `prefix` before both sentences, and
    {prefixed sentence: prefix}, the prompt each is encoded with (encode_with_prompts)."""
    out = [
        dataclasses.replace(
            p, first=[prefix + s for s in p.first], second=[prefix + s for s in p.second]
        )
        for p in subsets
    ]
    return out, {s: prefix for p in out for s in p.first + p.second}
