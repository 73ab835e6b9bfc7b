"""Bad inputs a new user tries: each fails with exit code 2 and one line naming the key or the
file (and row) and what to do, before a model loads where the input allows it; a bad setting
leaves no run dir and writes nothing to the tracking store."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from csetrain.config import RANGES, SCHEMAS, ConfigError, CsetrainError
from csetrain.eval.sts import EvalResult, STSEvaluator

from .helpers import csetrain_in_process, small_sts

# (overrides, regex on the one error line). All fail in validate_settings, before Hydra makes a
# run dir and before any model loads.
BAD_SETTINGS = [
    (["trainer.batch_size=-1"], r"trainer\.batch_size=-1: must be >= 2"),
    (["trainer.batch_size=1"], r"trainer\.batch_size=1: must be >= 2 \(every objective contrasts"),
    (["trainer.batch_size=abc"], r"config key 'trainer\.batch_size'"),
    (["trainer.max_steps=0"], r"trainer\.max_steps=0: must be >= 1"),
    (["trainer.lr=nan"], r"trainer\.lr=nan: must be a finite number > 0"),
    (["trainer.lr=0"], r"trainer\.lr=0\.0: must be a finite number > 0"),
    (["trainer.lr=-1e-5"], r"trainer\.lr=-1e-05: must be a finite number > 0"),
    (["trainer.weight_decay=inf"], r"trainer\.weight_decay=inf: must be a finite number >= 0"),
    (["trainer.warmup_steps=-5"], r"trainer\.warmup_steps=-5: must be >= 0"),
    (["trainer.max_grad_norm=-1"], r"trainer\.max_grad_norm=-1\.0: must be a finite number >= 0"),
    (["trainer.seed=-1"], r"trainer\.seed=-1: must be in \[0, 2\*\*32\)"),
    (["trainer.eval_every=-1"], r"trainer\.eval_every=-1: must be >= 0 \(0 = no dev evaluation\)"),
    (["trainer.save_every=-2"], r"trainer\.save_every=-2: must be >= 0"),
    (["trainer.log_every=0"], r"trainer\.log_every=0: must be >= 1"),
    (["trainer.num_threads=-1"], r"trainer\.num_threads=-1: must be >= 0"),
    (["trainer.grad_cache.chunk_size=-4"], r"trainer\.grad_cache\.chunk_size=-4: must be >= 0"),
    (["trainer.schedule=cosine"], r"'trainer\.schedule'='cosine' is not one of"),
    (["objective.temperature=0"], r"objective\.temperature=0: must be a finite number > 0"),
    (["objective.temperature=nan"], r"objective\.temperature=nan: must be a finite number > 0"),
    (
        ["objective=debcse", "objective.temperature=-0.05"],
        r"objective\.temperature=-0\.05: must be a finite number > 0",
    ),
    (["data.max_length=0"], r"data\.max_length=0: must be >= 1"),
    (["data.max_sentences=0"], r"data\.max_sentences=0: must be >= 1 \(or null for all\)"),
    (["eval.batch_size=0"], r"eval\.batch_size=0: must be >= 1"),
    (["dev_eval.batch_size=-8"], r"dev_eval\.batch_size=-8: must be >= 1"),
    (["model=saved"], r"model\.path has no value .*: pass model\.path=\.\.\."),
    (["model=hf"], r"model\.name_or_path has no value"),
]


def _one_error_line(result, pattern: str) -> str:
    """The command failed with exit code 2 and a single `error: ...` line matching `pattern`."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(("overrides", "pattern"), BAD_SETTINGS, ids=lambda v: str(v))
def test_bad_setting_is_one_line_and_writes_nothing(tmp_path, mlflow_store, overrides, pattern):
    out = tmp_path / "out"
    uri = mlflow_store(tmp_path / "store" / "mlflow.db")
    store = Path(uri.removeprefix("sqlite:///"))
    before = _digest(store)
    common = ["model=tiny", "data=sample", f"paths.output_dir={out}", f"tracking.uri={uri}"]
    _one_error_line(csetrain_in_process("validate", *common, *overrides), pattern)
    _one_error_line(csetrain_in_process("train", *common, *overrides), pattern)
    assert not out.exists()  # no run dir, no cache, nothing half-written
    assert _digest(store) == before
    with sqlite3.connect(store) as db:
        assert db.execute("select count(*) from runs").fetchone() == (0,)


def test_every_numeric_plain_setting_has_a_range():
    """A numeric field added to a schema without a range would go unchecked."""

    def numeric(schema, prefix):
        for f in dataclasses.fields(schema):
            if dataclasses.is_dataclass(f.type) or f.name == "grad_cache":
                yield from numeric(type(getattr(schema(), f.name)), f"{prefix}.{f.name}")
            elif f.type in ("int", "float", int, float):
                yield (prefix, f.name)

    found = {key for name, schema in SCHEMAS.items() for key in numeric(schema, name)}
    assert found and found <= set(RANGES), sorted(found - set(RANGES))


def test_defaults_are_in_range(tmp_path):
    result = csetrain_in_process("validate", "model=tiny", "data=sample")
    assert result.returncode == 0, result.stderr


# --- STS files: `csetrain eval` reads them before the model loads --------------------------


def _copy_pack(folder: Path) -> Path:
    """A private copy of the session's small STS-B pack."""
    return Path(shutil.copytree(small_sts(), folder / "sts_pack"))


def _sts_pack(tmp_path: Path, edit) -> Path:
    """A copy of the small STS-B pack with its test file changed by `edit(lines) -> bytes`."""
    pack = _copy_pack(tmp_path)
    test = pack / "sts" / "stsb" / "test.tsv"
    test.write_bytes(edit(test.read_text(encoding="utf-8").splitlines()))
    return pack


def _score(lines: list[str], row: int, score: str) -> bytes:
    fields = lines[row - 1].split("\t")
    lines[row - 1] = "\t".join([score, *fields[1:]])
    return ("\n".join(lines) + "\n").encode()


BAD_STS = [
    (lambda lines: _score(lines, 5, "four-ish"), r"test\.tsv:5: score 'four-ish' is not a number"),
    (lambda lines: _score(lines, 7, "nan"), r"test\.tsv:7: score 'nan' is not finite"),
    (lambda lines: _score(lines, 3, "inf"), r"test\.tsv:3: score 'inf' is not finite"),
    (lambda lines: _score(lines, 2, ""), r"test\.tsv:2: score '' is not a number"),
]


def _eval_args(tmp_path: Path, pack: Path) -> list[str]:
    return [
        "model=tiny",
        "eval=stsb_test",
        f"paths.data_dir={pack}",
        f"paths.output_dir={tmp_path / 'out'}",
        "tracking=none",
    ]


@pytest.mark.parametrize(("edit", "pattern"), BAD_STS)
def test_bad_gold_score_names_file_and_row(tmp_path, edit, pattern):
    pack = _sts_pack(tmp_path, edit)
    _one_error_line(csetrain_in_process("eval", *_eval_args(tmp_path, pack)), pattern)


def test_sts_file_that_is_a_directory(tmp_path):
    pack = _copy_pack(tmp_path)
    test = pack / "sts" / "stsb" / "test.tsv"
    test.unlink()
    test.mkdir()
    result = csetrain_in_process("eval", *_eval_args(tmp_path, pack))
    _one_error_line(result, r"stsb test split .*test\.tsv is a directory, not a file")


def test_sts_file_with_bom_and_crlf_reads_as_the_plain_one(tmp_path):
    plain = small_sts()
    bom = _sts_pack(tmp_path / "bom", lambda lines: "\ufeff".encode() + "\r\n".join(lines).encode())
    a = STSEvaluator(["stsb"], "test", "senteval", str(plain)).data["stsb"][0]
    b = STSEvaluator(["stsb"], "test", "senteval", str(bom)).data["stsb"][0]
    assert a.first == b.first and a.second == b.second
    np.testing.assert_array_equal(a.gold, b.gold)


# --- corpora --------------------------------------------------------------------------------


def test_nli_csv_with_bom_and_crlf_is_accepted(tmp_path):
    from csetrain.data.sources import TripletCSV

    rows = ["sent0,sent1,hard_neg", "a cat sits,a cat,no cat", "dogs run,dogs move,dogs sleep"]
    (tmp_path / "nli.csv").write_bytes("\ufeff".encode() + "\r\n".join(rows).encode())
    corpus = TripletCSV("nli.csv", data_dir=str(tmp_path)).load()
    assert corpus.records[0] == {
        "anchor": "a cat sits",
        "positive": "a cat",
        "hard_negative": "no cat",
    }
    assert len(corpus.records) == 2


def test_text_corpus_with_bom_loses_the_bom_and_keeps_byte_offsets(tmp_path):
    from csetrain.data.sources import TextLines

    (tmp_path / "c.txt").write_bytes("\ufeff".encode() + b"first\r\nsecond\r\n")
    assert TextLines(["c.txt"], data_dir=str(tmp_path)).load().records[0] == {"anchor": "first"}
    (tmp_path / "bad.txt").write_bytes("\ufeff".encode() + b"ok\n\nbad \xff\n")
    with pytest.raises(ConfigError, match=r"bad\.txt:3: not valid UTF-8 \(byte 11\)"):
        TextLines(["bad.txt"], data_dir=str(tmp_path)).load()


def test_corpus_file_that_is_a_directory(tmp_path):
    from csetrain.data.sources import TextLines

    (tmp_path / "adir.txt").mkdir()
    with pytest.raises(ConfigError, match=r"corpus file .*adir\.txt is a directory, not a file"):
        TextLines(["adir.txt"], data_dir=str(tmp_path)).load()


def test_repetitive_corpus_warns(tmp_path, caplog):
    from csetrain.data.sources import TextLines

    (tmp_path / "same.txt").write_text("the same line\n" * 300)
    (tmp_path / "varied.txt").write_text("".join(f"line {i}\n" for i in range(300)))
    with caplog.at_level("WARNING", logger="csetrain.data.sources"):
        TextLines(["varied.txt"], data_dir=str(tmp_path)).load()
        assert not caplog.records
        TextLines(["same.txt"], data_dir=str(tmp_path)).load()
    assert "only 1 distinct sentences of 300" in caplog.text


# --- resume state ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ['{"step": 3, "config_ha', "[3]", ""])
def test_truncated_meta_is_an_error_not_a_fresh_start(tmp_path, text):
    out = tmp_path / "out"
    meta = out / "runs" / "old" / "checkpoints" / "last" / "meta.json"
    meta.parent.mkdir(parents=True)
    meta.write_text(text)
    args = ["model=tiny", "data=sample", f"paths.output_dir={out}", "tracking=none"]
    result = csetrain_in_process("train", *args, "trainer.resume=auto")
    line = _one_error_line(result, r"checkpoint .*old/checkpoints/last is corrupt \(meta\.json: ")
    assert line.endswith("delete it or set trainer.resume=never")
    assert not (out / "cache").exists()  # refused before the data was tokenized


# --- evaluator results ----------------------------------------------------------------------


def test_nan_result_is_refused_by_every_evaluator():
    with pytest.raises(CsetrainError, match=r"evaluation gave senteval/x/spearman=nan"):
        EvalResult({"senteval/x/spearman": float("nan")}, float("nan"), "senteval/x/spearman")
    assert EvalResult({"k": 1.0}, 1.0, "k").primary == 1.0


@pytest.mark.filterwarnings("ignore:An input array is constant")
def test_constant_embeddings_fail_the_evaluation():
    """Equal embeddings give equal cosines: Spearman is undefined, so there is no score."""
    sts = STSEvaluator(["stsb"], "test", "senteval", str(small_sts()))
    unique = sts.sentences()
    with pytest.raises(CsetrainError, match=r"evaluation gave senteval/stsb/spearman=nan"):
        sts.score(unique, torch.ones(len(unique), 4))
    assert math.isfinite(sts.score(unique, torch.randn(len(unique), 4)).primary)


@pytest.mark.parametrize(
    ("extra", "bad_file", "pattern"),
    [
        (["eval.protocol=bogus"], False, r"eval\.protocol='bogus' is unknown"),
        ([], True, r"test\.tsv:5: score 'four-ish' is not a number"),
    ],
)
def test_bad_final_eval_fails_before_the_first_step(tmp_path, extra, bad_file, pattern):
    """The test evaluator is built before training: nothing is trained, saved or lost."""
    edit = (lambda lines: _score(lines, 5, "four-ish")) if bad_file else None
    pack = _sts_pack(tmp_path, edit) if edit else _copy_pack(tmp_path)
    args = [*_eval_args(tmp_path, pack), "experiment=demo", "trainer.max_steps=2"]
    result = csetrain_in_process("train", *args, "trainer.batch_size=8", *extra)
    _one_error_line(result, pattern)
    out = tmp_path / "out"
    assert not list(out.rglob("checkpoints")) and not list(out.rglob("metrics.jsonl"))
