"""Several hard negatives per row: the fields they become, the loss for k = 3 against a hand
computation (float64, an explicit loop over the definition), k = 1 bitwise as before, GradCache
and packing exact with k = 3, data=files reading list columns and negative_1..3 columns, bad
rows with another count, and a 2-step run. (The 2-process DDP test with k = 3 is in
tests/test_ddp.py, parametrised over k.)

Float64 throughout: GradCache and packing sum the same terms in other orders; in float64 that
moves values by ~n * 1.1e-16 (tests/tolerances.py), so FLOAT64_RTOL is loose against rounding
and far below a misplaced negative or weight."""

import json
import math

import numpy as np
import pytest
import torch

from csetrain.augmentations.dropout import Dropout
from csetrain.config import ConfigError, TrainerConfig
from csetrain.data.collate import Collator
from csetrain.data.files import Files
from csetrain.data.hard_negatives import expand_roles, negative_fields, role_fields
from csetrain.grad_cache import GradCache
from csetrain.losses import hard_negative_offset, info_nce
from csetrain.modeling.backbones import tiny
from csetrain.modeling.encoder import SentenceEncoder
from csetrain.negatives.hard_from_data import HardFromData
from csetrain.objectives.simcse_sup import SimCSESup
from csetrain.runtime import Runtime

from .helpers import csetrain_in_process, negative_rows, only_run, small_sts
from .test_files_data import save_dataset, write
from .tolerances import FLOAT64_RTOL, assert_float64_close

K = 3
TEXTS = [
    "a man plays a guitar",
    "two dogs run in a field",
    "the stock market fell today",
    "a child reads a book",
    "rain is expected tomorrow",
    "she sells sea shells",
]
TAILS = (" never", " not at all", " or else")  # hard negative j of row i: TEXTS[i] + TAILS[j]


def test_fields_of_k_negatives():
    assert negative_fields(1) == ("hard_negative",)  # k = 1: the field every corpus had
    assert negative_fields(3) == ("hard_negative_1", "hard_negative_2", "hard_negative_3")
    fields = ("anchor", "positive", "hard_negative_10", "hard_negative_2", "hard_negative_1")
    assert role_fields("hard_negative", fields) == fields[4:1:-1]  # by number, not by text
    assert role_fields("hard_negative", ("anchor", "hard_negative")) == ("hard_negative",)
    assert role_fields("hard_negative", ("anchor", "positive")) == ()
    assert expand_roles(("anchor", "positive", "hard_negative"), fields[:2] + fields[2:]) == (
        "anchor",
        "positive",
        "hard_negative_1",
        "hard_negative_2",
        "hard_negative_10",
    )


def test_offset_puts_the_weight_on_each_own_negative():
    offset = hard_negative_offset(rows=2, columns=2 + 3 * 2, start=2, weight=0.5, blocks=3)
    expected = np.zeros((2, 8))
    for i in range(2):
        for j in range(3):
            expected[i, 2 + j * 2 + i] = 0.5
    assert np.array_equal(offset.numpy(), expected)


def _hand_loss(a, p, negs, temperature, weight):
    """-mean_i log softmax over [cos(a_i, p_j)]_j + [cos(a_i, n_jm) + w*(j == i)]_{j,m}, / T."""

    def cos(x, y):
        return float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y)))

    total = 0.0
    for i in range(len(a)):
        logits = [cos(a[i], p[j]) / temperature for j in range(len(p))]
        for j in range(len(p)):  # every row's negatives are candidates for every anchor
            for n in negs:
                logits.append(cos(a[i], n[j]) / temperature + (weight if j == i else 0.0))
        log_z = math.log(sum(math.exp(v) for v in logits))
        total += log_z - logits[i]
    return total / len(a)


def _views(rows: int, negatives: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    names = ("anchor", "positive", *negative_fields(negatives))
    return {n: torch.randn(rows, 5, generator=gen, dtype=torch.float64) for n in names}


@pytest.mark.parametrize("weight", [0.0, math.log(2.0)])
def test_k3_loss_equals_hand_computation(weight):
    views = _views(4, K)
    objective = SimCSESup(HardFromData(), temperature=0.05, hard_negative_weight=weight)
    out = objective.loss(views, batch=None)
    negs = [views[f].numpy() for f in negative_fields(K)]
    hand = _hand_loss(views["anchor"].numpy(), views["positive"].numpy(), negs, 0.05, weight)
    # float64 throughout: cosines of 5 terms, a softmax over 16 candidates of size <= 21
    assert out.loss.item() == pytest.approx(hand, rel=FLOAT64_RTOL)
    assert out.loss.dtype == torch.float64


def test_k1_is_bitwise_the_single_negative_loss():
    views = _views(4, 1)
    out = SimCSESup(HardFromData(), 0.05, math.log(3.0)).loss(views, batch=None)
    offset = hard_negative_offset(4, 8, 4, math.log(3.0))  # SimCSE's layout, as before k
    candidates = torch.cat([views["positive"], views["hard_negative"]])
    expected, _ = info_nce(views["anchor"], candidates, torch.arange(4), 0.05, offset)
    assert torch.equal(out.loss, expected)


def _batch(encoder, negatives: int = K):
    fields = negative_fields(negatives)
    tok = encoder.tokenizer
    rows = negative_rows(tok, TEXTS, fields, TAILS)
    collate = Collator(
        ("anchor", "positive", *fields), Dropout(), tok.pad_token_id, set(), False, seed=0
    )
    return collate(rows, step=0)


def _loss_and_grads(objective, encoder, batch):
    for p in encoder.parameters():
        p.grad = None
    out = objective(encoder, batch)
    out.loss.backward()
    return out.loss, [p.grad.clone() for p in encoder.parameters() if p.grad is not None]


def _assert_same(expected, got):
    (loss_a, grads_a), (loss_b, grads_b) = expected, got
    assert_float64_close(loss_b, loss_a)
    assert len(grads_a) == len(grads_b) > 5
    scale = max(g.abs().max().item() for g in grads_a)
    assert scale > 0
    for a, b in zip(grads_a, grads_b):
        assert_float64_close(b, a, scale)


@pytest.fixture
def encoder():
    torch.manual_seed(0)
    return SentenceEncoder(tiny(dropout=0.0), pooler="cls", mlp_head="always").double()


def test_k3_grad_cache_equals_full_batch(encoder):
    objective = SimCSESup(HardFromData(), 0.05, math.log(2.0))
    batch = _batch(encoder)
    assert batch.fields[2:] == negative_fields(K) and batch.input_ids.shape[0] == 5 * 6
    full = _loss_and_grads(objective, encoder, batch)
    cached = GradCache(objective, chunk_size=4, runtime=Runtime(TrainerConfig(device="cpu")))
    _assert_same(full, _loss_and_grads(cached, encoder, batch))  # chunks of 4 and 2 rows


def test_k3_packing_equals_padding(encoder):
    objective = SimCSESup(HardFromData(), 0.05, math.log(2.0))
    batch = _batch(encoder)
    padded = _loss_and_grads(objective, encoder, batch)
    encoder.packing = True
    _assert_same(padded, _loss_and_grads(objective, encoder, batch))


# --- data=files -------------------------------------------------------------------------------

ROWS = [
    {
        "anchor": f"query {i}",
        "positive": f"document {i}",
        "negs": [f"wrong {i}.{j}" for j in (1, 2, 3)],
    }
    for i in range(3)
]
EXPECTED = [
    {
        "anchor": r["anchor"],
        "positive": r["positive"],
        **dict(zip(negative_fields(K), r["negs"])),
    }
    for r in ROWS
]


def _numbered(rows):
    """The rows in sentence-transformers' n-tuple layout: negative_1 .. negative_3 columns."""
    return [
        {"anchor": r["anchor"], "positive": r["positive"]}
        | {f"negative_{j + 1}": n for j, n in enumerate(r["negs"])}
        for r in rows
    ]


def _jsonl(path, rows):
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


def _parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "save_to_disk"])
def test_a_list_column_gives_k_fields(tmp_path, fmt):
    rows = [{"anchor": r["anchor"], "positive": r["positive"], "negative": r["negs"]} for r in ROWS]
    path = {
        "jsonl": lambda: _jsonl(tmp_path / "d.jsonl", rows),
        "json": lambda: write(tmp_path / "d.json", json.dumps(rows)),
        "parquet": lambda: _parquet(tmp_path / "d.parquet", rows),
        "save_to_disk": lambda: save_dataset(
            tmp_path / "saved", {c: [r[c] for r in rows] for c in rows[0]}
        ),
    }[fmt]()
    corpus = Files(str(path)).load()  # the sentence-transformers layout, found by default
    assert corpus.records == EXPECTED
    assert corpus.fields == ("anchor", "positive", *negative_fields(K))
    assert corpus.tags["data.hard_negatives"] == "3"
    assert corpus.tags["data.columns"] == "anchor=anchor,positive=positive,hard_negative=negative"


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_numbered_columns_give_k_fields(tmp_path, fmt):
    rows = _numbered(ROWS)
    if fmt == "csv":
        path = write(tmp_path / "d.csv", [list(rows[0])] + [list(r.values()) for r in rows])
    else:
        path = {"jsonl": _jsonl, "parquet": _parquet}[fmt](tmp_path / f"d.{fmt}", rows)
    corpus = Files(str(path)).load()
    assert corpus.records == EXPECTED
    assert corpus.tags["data.columns"] == (
        "anchor=anchor,positive=positive,hard_negative=negative_1+negative_2+negative_3"
    )


def test_mapping_names_several_columns_or_a_list_column(tmp_path):
    rows = [
        {"q": r["anchor"], "d": r["positive"], "a": r["negs"][0], "b": r["negs"][1:]} for r in ROWS
    ]
    path = _jsonl(tmp_path / "d.jsonl", rows)
    columns = {"anchor": "q", "positive": "d", "hard_negative": ["a", "b"]}  # text + list
    corpus = Files(str(path), columns=columns).load()
    assert corpus.records == EXPECTED
    lists = [{"q": r["anchor"], "d": r["positive"], "n": r["negs"]} for r in ROWS]
    path = _jsonl(tmp_path / "l.jsonl", lists)
    corpus = Files(str(path), columns={"anchor": "q", "positive": "d", "hard_negative": "n"}).load()
    assert corpus.records == EXPECTED
    with pytest.raises(ConfigError, match=r"data.columns.anchor=\['q', 'd'\]: name one column"):
        Files(str(path), columns={"anchor": ["q", "d"]}).load()
    with pytest.raises(ConfigError, match="no column 'x' for data.columns.hard_negative"):
        Files(str(path), columns={"anchor": "q", "hard_negative": ["n", "x"]}).load()


def test_a_row_with_another_count_is_a_bad_row(tmp_path):
    lists = [
        {"anchor": r["anchor"], "positive": r["positive"], "negative": r["negs"]} for r in ROWS
    ]
    lists.insert(1, {"anchor": "q", "positive": "d", "negative": ["only", "two"]})
    lists.append({"anchor": "q", "positive": "d", "negative": []})
    lists.append({"anchor": "q", "positive": "d", "negative": ["x", 7, "y"]})
    path = _jsonl(tmp_path / "d.jsonl", lists)
    with pytest.raises(ConfigError) as err:
        Files(str(path)).load()
    assert str(err.value) == (
        f"{path}:5: 'negative' is an empty list — give it at least one hard negative, "
        "delete the row, or set data.on_bad_row=drop"
    )  # text problems are found while reading; counts once k (most rows: 3) is known
    lists.pop(-2)
    path = _jsonl(tmp_path / "d.jsonl", lists)
    with pytest.raises(ConfigError, match=r"d.jsonl:5: 'negative\[1\]' is a number \(7\), not"):
        Files(str(path)).load()
    lists.pop()
    path = _jsonl(tmp_path / "d.jsonl", lists)
    with pytest.raises(ConfigError) as err:
        Files(str(path)).load()
    assert str(err.value) == (
        f"{path}:2: 2 hard negatives, most rows have 3 — give it exactly 3 (or set "
        "data.negatives=2 if that is the right k), delete the row, or set data.on_bad_row=drop"
    )
    corpus = Files(str(path), on_bad_row="drop").load()
    assert corpus.records == EXPECTED and corpus.tags["data.dropped_rows"] == "1"
    corpus = Files(str(path), on_bad_row="drop", negatives=2).load()  # k pinned: 3s are bad
    assert corpus.fields[2:] == negative_fields(2) and len(corpus.records) == 1
    assert corpus.tags["data.dropped_rows"] == "3"
    with pytest.raises(ConfigError, match="data.negatives asks for 2"):
        Files(str(path), negatives=2).load()


def test_negatives_setting_is_checked(tmp_path):
    path = write(tmp_path / "pairs.csv", [["anchor", "positive"], ["a", "b"]])
    with pytest.raises(ConfigError, match="data.negatives=0: give k"):
        Files(str(path), negatives=0)
    with pytest.raises(ConfigError, match="data.negatives=2 but no column is mapped"):
        Files(str(path), negatives=2).load()


def test_train_two_steps_with_three_negatives(tmp_path, mlflow_store):
    rows = [
        {
            "anchor": f"query {i}",
            "positive": f"document {i}",
            "negative": [f"no {i}.{j}" for j in range(3)],
        }
        for i in range(8)
    ]
    path = _jsonl(tmp_path / "k3.jsonl", rows)
    uri = mlflow_store(tmp_path / "mlflow.db")
    proc = csetrain_in_process(
        "train",
        "experiment=demo",
        "model=tiny",
        "objective=simcse_sup",
        "objective.hard_negative_weight=0.5",
        "data=files",
        f"data.path={path}",
        "trainer.max_steps=2",
        "trainer.eval_every=0",
        "trainer.batch_size=4",
        "trainer.progress=false",
        f"tracking.uri={uri}",
        f"paths.output_dir={tmp_path}/out",
        f"paths.data_dir={small_sts()}",
        f"paths.cache_dir={tmp_path}/cache",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    client, run = only_run(uri)
    assert run.info.status == "FINISHED"
    assert run.data.tags["data.hard_negatives"] == "3"
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert len(losses) >= 1 and all(math.isfinite(m.value) for m in losses)
