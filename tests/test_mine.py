"""Offline mining (`csetrain mine`): exact top-k with TopK-PercPos against a brute-force
reference, the mined file read back by data=files, and the command end to end."""

import json
import re

import pytest

from csetrain.config import ConfigError
from csetrain.data.files import Files
from csetrain.modeling.backbones import minilm_l6
from csetrain.modeling.encoder import SentenceEncoder
from csetrain.negatives.offline import candidate_pool, embed, mine_negatives, write_mined

from .helpers import csetrain_in_process

PAIRS = [
    ("how do i bake bread", "mix flour water and yeast then bake the dough"),
    ("what is the capital of france", "paris is the capital of france"),
    ("how fast can a cheetah run", "cheetahs reach about 110 km per hour"),
    ("who wrote hamlet", "hamlet is a tragedy by william shakespeare"),
    ("how do plants make food", "plants use photosynthesis to turn light into sugar"),
    ("what causes rain", "rain falls when water vapour condenses into droplets"),
    ("how do i make pizza dough", "knead flour yeast salt and water for pizza dough"),
    ("what is the largest city in france", "paris is the most populous city of france"),
    ("which animal is the fastest", "the cheetah is the fastest land animal"),
    ("who wrote macbeth", "macbeth was written by shakespeare"),
]
RECORDS = [{"anchor": a, "positive": p} for a, p in PAIRS]


@pytest.fixture(scope="module")
def teacher():
    return SentenceEncoder(minilm_l6(), pooler="mean").eval()


def brute_force(teacher, records, k, fraction):
    """Every candidate scored in float64, sorted in Python, the row's own positives and anchor
    dropped, the PercPos threshold applied, the first k kept (None: fewer than k survive)."""
    pool = candidate_pool(records)
    keys = embed(teacher, pool, 4).double()
    queries = embed(teacher, [r["anchor"] for r in records], 4).double()
    positives = embed(teacher, [r["positive"] for r in records], 4).double()
    out = []
    for r, q, p in zip(records, queries, positives):
        pos = float(q @ p)
        own = {x["positive"] for x in records if x["anchor"] == r["anchor"]} | {r["anchor"]}
        ranked = sorted(range(len(pool)), key=lambda j: -float(keys[j] @ q))
        kept = [pool[j] for j in ranked if pool[j] not in own and keys[j] @ q <= fraction * pos]
        out.append(kept[:k] if len(kept) >= k else None)
    return out


@pytest.mark.parametrize("fraction, k", [(0.95, 3), (0.1, 7)])
def test_mined_negatives_equal_brute_force(teacher, fraction, k):
    rows, stats = mine_negatives(teacher, RECORDS, k=k, fraction=fraction, depth=10, batch_size=4)
    expected = brute_force(teacher, RECORDS, k, fraction)
    assert stats == {"rows": 10, "kept": sum(e is not None for e in expected), "candidates": 10}
    assert [r["negatives"] for r in rows] == [e for e in expected if e is not None]
    for r in rows:  # the rule holds on the reported scores, best first
        assert all(s <= fraction * r["positive_score"] + 1e-6 for s in r["scores"])
        assert r["scores"] == sorted(r["scores"], reverse=True)
        assert r["positive"] not in r["negatives"]
    if fraction == 0.95:  # the false negative the rule exists for: MiniLM scores it 0.742
        cheetah = next(r for r in rows if r["anchor"] == "how fast can a cheetah run")
        assert cheetah["positive_score"] == pytest.approx(0.751, abs=0.01)
        assert "the cheetah is the fastest land animal" not in cheetah["negatives"]
    else:  # a strict threshold leaves rows without k survivors: they are dropped
        assert stats["kept"] < stats["rows"]


def test_mined_file_is_read_back_by_data_files(teacher, tmp_path):
    rows, _ = mine_negatives(teacher, RECORDS, k=2, fraction=0.95, depth=10)
    path = write_mined(rows, tmp_path / "mined.jsonl", layout="triplet")
    corpus = Files(path=str(path), name="mined").load()
    assert corpus.fields == ("anchor", "positive", "hard_negative")
    expected = [
        {"anchor": r["anchor"], "positive": r["positive"], "hard_negative": n}
        for r in rows
        for n in r["negatives"]
    ]
    assert [dict(rec) for rec in corpus.records] == expected
    tuples = write_mined(rows, tmp_path / "tuples.jsonl", layout="n-tuple")
    first = json.loads(tuples.read_text().splitlines()[0])
    assert list(first) == ["anchor", "positive", "negative_1", "negative_2"]


def test_bad_inputs_fail_in_one_line(teacher, tmp_path):
    with pytest.raises(ConfigError, match="needs \\(anchor, positive\\) rows"):
        mine_negatives(teacher, [{"anchor": "a lone sentence"}])
    with pytest.raises(ConfigError, match="mine.layout"):
        write_mined([], tmp_path / "x.jsonl", layout="pairs")
    with pytest.raises(ConfigError, match="mine.output"):
        write_mined([], tmp_path / "x.csv")


def test_mine_command_writes_a_training_file(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"query": a, "positive": p}) + "\n" for a, p in PAIRS))
    out = tmp_path / "mined.jsonl"
    result = csetrain_in_process(
        "mine", "data=files", f"data.path={data}", "mine.teacher=tiny", f"mine.output={out}",
        "mine.k=2", "mine.fraction=1.0", "mine.device=cpu", f"paths.output_dir={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    kept = int(re.search(r"mined (\d+) of 10 rows against 10 candidates", result.stdout)[1])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert kept > 0 and len(lines) == 2 * kept  # triplet layout: a line per negative
    assert set(lines[0]) == {"anchor", "positive", "negative"}
    missing = csetrain_in_process("mine", "data=files", f"data.path={data}")
    assert missing.returncode == 2 and "mine.output has no value" in missing.stderr
