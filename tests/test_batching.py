"""Inference batching: length-sorted batches capped in sentences and padded tokens, by hand;
encode() under the cap equal to each sentence encoded alone (float64, no padding at all); on a
CPU, batches run one per worker thread, in order, without gradients, threads restored."""

import copy
import threading

import pytest
import torch

from csetrain.modeling.batching import (
    CPU_BATCH_TOKENS,
    batch_runner,
    batch_token_budget,
    cpu_workers,
    length_sorted_batches,
)
from csetrain.modeling.encoder import SentenceEncoder

from .helpers import sharded_linear
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


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_cpu_batches_run_one_per_worker_thread_in_order(tiny_backbone, two_threads):
    encoder = copy.deepcopy(SentenceEncoder(tiny_backbone, pooler="mean")).double().eval()
    seen = []  # (thread, threads inside it, grad on) per batch

    def recording_inference(input_ids, attention_mask, prompt_length=None):
        seen.append((threading.get_ident(), torch.get_num_threads(), torch.is_grad_enabled()))
        return encoder.inference(input_ids, attention_mask, prompt_length=prompt_length)

    many = [f"{s} {i}" for i in range(8) for s in SENTENCES]
    vectors = encoder.encode(many, batch_size=2, embed=recording_inference, batch_tokens=16)
    alone = torch.cat([encoder.inference(**_ids(encoder, s)) for s in many])
    assert_float32_of_float64_close(vectors, alone)  # each vector in its sentence's row
    assert threading.get_ident() not in {t for t, _, _ in seen}
    assert len({t for t, _, _ in seen}) == 2  # two workers, each one thread inside
    assert {(n, grad) for _, n, grad in seen} == {(1, False)}
    assert torch.get_num_threads() == 2  # restored


def test_a_single_batch_runs_in_the_callers_thread_on_every_core(two_threads):
    seen = []
    with batch_runner(torch.nn.Linear(1, 1), torch.device("cpu"), jobs=1) as run:
        list(run(lambda x: seen.append((threading.get_ident(), torch.get_num_threads())), [0]))
    assert seen == [(threading.get_ident(), 2)]


def test_one_batch_at_a_time_where_workers_would_change_what_runs(two_threads):
    layer = torch.nn.Linear(3, 3)
    assert cpu_workers(layer, torch.device("cpu")) == 2
    assert cpu_workers(layer, torch.device("cuda")) == 1
    with torch.autocast("cpu", dtype=torch.bfloat16):  # thread-local: a worker would lose it
        assert cpu_workers(layer, torch.device("cpu")) == 1
    with sharded_linear() as sharded:  # FSDP's forward runs collectives: never interleaved
        assert cpu_workers(sharded, torch.device("cpu")) == 1
    torch.set_num_threads(1)
    assert cpu_workers(layer, torch.device("cpu")) == 1


def test_an_error_in_a_batch_surfaces_and_restores_the_threads(two_threads):
    def fail_on_three(x):
        if x == 3:
            raise ValueError("batch 3")
        return x

    runner = batch_runner(torch.nn.Linear(1, 1), torch.device("cpu"), jobs=6)
    with pytest.raises(ValueError, match="batch 3"), runner as run:
        list(run(fail_on_three, range(6)))
    assert torch.get_num_threads() == 2
