"""Bad paths and broken files around a run: an unwritable Hydra dir, a full cache disk, a store
file that is not SQLite, a malformed spill file, quotes in a run dir, a corrupt tokenizer.json.
Each is one `error: ...` line (exit code 2) naming the file or key, and leaves nothing partial."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import pytest

from .helpers import csetrain_in_process
from .test_bad_inputs import _one_error_line

COMMON = ["model=tiny", "data=sample", "tracking=none"]


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["hydra.run.dir=/proc/csetrain-x"], r"hydra\.run\.dir=/proc/csetrain-x is not a writable"),
        (["-m", "hydra.sweep.dir={file}/sub", "trainer.lr=1e-5,2e-5"], r"hydra\.sweep\.dir=.*/sub"),
    ],
)
def test_unwritable_hydra_dir_is_one_line(tmp_path, args, pattern):
    (tmp_path / "file").write_text("a file where a folder is expected")
    args = [a.replace("{file}", str(tmp_path / "file")) for a in args]
    out = [f"paths.output_dir={tmp_path / 'out'}"]
    line = _one_error_line(csetrain_in_process("train", *COMMON, *out, *args), pattern)
    assert line.endswith("(or drop it)")
    assert not (tmp_path / "out" / "runs").exists()


def _small_corpus(tmp_path: Path):
    from csetrain.data.sources import TextLines

    (tmp_path / "c.txt").write_text("".join(f"sentence number {i}\n" for i in range(20)))
    return TextLines(["c.txt"], data_dir=str(tmp_path)).load()


def test_full_cache_disk_leaves_no_partial_entry(tmp_path, monkeypatch):
    import datasets

    from csetrain.config import ConfigError
    from csetrain.data.cache import tokenized_dataset
    from csetrain.modeling.backbones import tiny

    def full_disk(self, folder, *args, **kwargs):
        (Path(folder) / "data-00000-of-00001.arrow").write_bytes(b"half an arrow file")
        raise OSError(errno.ENOSPC, "No space left on device")

    corpus, tokenizer = _small_corpus(tmp_path), tiny().tokenizer
    cache = tmp_path / "cache"
    with monkeypatch.context() as patch:
        patch.setattr(datasets.Dataset, "save_to_disk", full_disk)
        with pytest.raises(ConfigError, match=r"no space left in the tokenization cache .*cache: "):
            tokenized_dataset(corpus, tokenizer, cache)
    assert list((cache / "tokenized").iterdir()) == []  # no .tmp-* folder, no entry
    with monkeypatch.context() as patch:  # any other failure: re-raised, nothing left either
        patch.setattr(datasets.Dataset, "save_to_disk", lambda *a, **k: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            tokenized_dataset(corpus, tokenizer, cache)
    assert list((cache / "tokenized").iterdir()) == []
    assert len(tokenized_dataset(corpus, tokenizer, cache)) == 20  # and a later run caches it


def test_full_cache_disk_fails_train_in_one_line(tmp_path, monkeypatch):
    import datasets

    def full_disk(self, folder, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", full_disk)
    args = [*COMMON, f"paths.output_dir={tmp_path / 'out'}", f"paths.cache_dir={tmp_path / 'c'}"]
    line = _one_error_line(csetrain_in_process("train", *args), r"no space left in the tokeniz")
    assert line.endswith("set paths.cache_dir to a disk with room")
    assert not list((tmp_path / "c").rglob(".tmp-*"))


def test_garbage_store_file_is_one_line(tmp_path):
    db = tmp_path / "mlflow.db"
    db.write_bytes(bytes(range(256)) * 16)
    uri = f"sqlite:///{db}"
    pattern = rf"{db} is not an SQLite database"
    _one_error_line(csetrain_in_process("runs", "list", "--uri", uri), pattern)
    (tmp_path / "a").mkdir()
    compare = csetrain_in_process("runs", "compare", str(tmp_path / "a"), "x", "--uri", uri)
    _one_error_line(compare, pattern)
    assert db.read_bytes() == bytes(range(256)) * 16  # left as it was


METRIC = {"run_id": "r1", "key": "loss", "value": 1.0, "timestamp": 1, "step": 1}


@pytest.mark.parametrize(
    ("lines", "pattern"),
    [
        ([json.dumps(METRIC), '{"run_id": "r1", "key"'], r"unsynced\.jsonl:2: not valid JSON \("),
        (["", json.dumps(METRIC), "", "not json"], r"unsynced\.jsonl:4: not valid JSON"),
        ([json.dumps(METRIC), "[1, 2]"], r"unsynced\.jsonl:2: not a row a run spills"),
        ([json.dumps({"key": "loss"})], r"unsynced\.jsonl:1: not a row a run spills"),
    ],
)
def test_malformed_spill_is_one_line_and_sends_nothing(tmp_path, mlflow_store, lines, pattern):
    """The whole file is checked before any call is sent: a bad last line sends nothing."""
    uri = mlflow_store(tmp_path / "store" / "mlflow.db")
    store = Path(uri.removeprefix("sqlite:///"))
    before = hashlib.sha256(store.read_bytes()).hexdigest()
    spill = tmp_path / "unsynced.jsonl"
    spill.write_text("\n".join(lines) + "\n")
    line = _one_error_line(csetrain_in_process("runs", "sync", str(spill), "--uri", uri), pattern)
    assert line.endswith("nothing was sent")
    assert hashlib.sha256(store.read_bytes()).hexdigest() == before
    assert spill.read_text() == "\n".join(lines) + "\n"


def test_run_dir_with_quotes_is_found_in_the_store(tmp_path, mlflow_store):
    from mlflow import MlflowClient

    from csetrain.app.store.queries import runs_tagged

    uri = mlflow_store(tmp_path / "mlflow.db")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("csetrain")
    folders = {}
    for name in ["it's", 'say "hi"', "both ' and \"", "plain % _"]:
        folder = (tmp_path / name).resolve()
        folder.mkdir()
        folders[name] = folder
        run = client.create_run(experiment, tags={"run_dir": str(folder)}, run_name=name)
        client.set_terminated(run.info.run_id)
    for name, folder in folders.items():
        found = runs_tagged(uri, "csetrain", "run_dir", str(folder))
        assert [r["name"] for r in found] == [name]
    result = csetrain_in_process(
        "runs", "compare", str(folders["it's"]), str(folders["both ' and \""]), "--uri", uri
    )
    assert result.returncode == 0, result.stderr
    assert "it's" in result.stdout and "both ' and" in result.stdout


@pytest.mark.parametrize("edit", [lambda b: b[:200], lambda b: b"\x00\xff", lambda b: b"[1]"])
def test_corrupt_tokenizer_json_names_the_file(tmp_path, edit):
    from csetrain.modeling.backbones import tiny
    from csetrain.modeling.encoder import SentenceEncoder
    from csetrain.modeling.export import save_sentence_transformer

    folder = save_sentence_transformer(SentenceEncoder(tiny(), pooler="cls"), tmp_path / "m")
    tokenizer = folder / "tokenizer.json"
    tokenizer.write_bytes(edit(tokenizer.read_bytes()))
    args = ["model=saved", f"model.path={folder}", "eval=stsb_test", "tracking=none"]
    result = csetrain_in_process("eval", *args, f"paths.output_dir={tmp_path / 'out'}")
    line = _one_error_line(result, rf"{tokenizer} is corrupt or not a tokenizer file \(")
    assert line.endswith("re-save the tokenizer or re-download the model")
