"""Inference batching: length-sorted batches capped in sentences and padded tokens, by hand, and
encode() under the cap equal to each sentence encoded alone (float64, no padding at all)."""

import copy

import torch

from csetrain.modeling.batching import (
    CPU_BATCH_TOKENS,
    batch_token_budget,
    length_sorted_batches,
)
from csetrain.modeling.encoder import SentenceEncoder

from .tolerances import assert_float32_of_float64_close

SENTENCES = [
    "a cat sits on the mat .",
    "the quick brown fox jumps over the lazy dog near the river bank today",
    "hello",
    "two words",
    "a cat sits on the mat .",  # a repeat: encoded once, returned twice
    "one more sentence of middling length here",
]


def test_batches_by_hand():
    lengths = [3, 10, 5, 1, 10]  # longest first, ties in input order: 1, 4, 2, 0, 3
    assert length_sorted_batches(lengths, 3) == [[1, 4, 2], [0, 3]]
    # 20 padded tokens: two of length 10, then up to four of length <= 5, but at most 3 items
    assert length_sorted_batches(lengths, 3, max_tokens=20) == [[1, 4], [2, 0, 3]]
    # an item longer than the budget still gets a batch of its own
    assert length_sorted_batches(lengths, 8, max_tokens=4) == [[1], [4], [2], [0], [3]]
    assert length_sorted_batches([], 4, max_tokens=8) == []


def test_budget_is_on_for_a_cpu_off_for_a_gpu_and_overridable():
    assert batch_token_budget(torch.device("cpu")) == CPU_BATCH_TOKENS
    assert batch_token_budget(torch.device("cuda")) is None
    assert batch_token_budget(torch.device("cpu"), 0) is None  # 0: no cap
    assert batch_token_budget(torch.device("cuda"), 64) == 64


def test_capped_encode_equals_each_sentence_alone(tiny_backbone):
    encoder = copy.deepcopy(SentenceEncoder(tiny_backbone, pooler="mean")).double().eval()
    widths = []

    def recording_inference(input_ids, attention_mask, prompt_length=None):
        widths.append(tuple(input_ids.shape))
        return encoder.inference(input_ids, attention_mask, prompt_length=prompt_length)

    budget = 12
    vectors = encoder.encode(
        SENTENCES, batch_size=4, embed=recording_inference, batch_tokens=budget
    )
    alone = torch.cat([encoder.inference(**_ids(encoder, s)) for s in SENTENCES])
    assert_float32_of_float64_close(vectors, alone)
    assert sum(n for n, _ in widths) == len(set(SENTENCES))  # each distinct sentence once
    assert len(widths) > 2 and all(n * width <= budget or n == 1 for n, width in widths)


def _ids(encoder, sentence):
    batch = encoder.tokenize([sentence])
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
