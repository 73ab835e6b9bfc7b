"""data=files: every format, the column -> role mapping and its defaults, both bad-row policies,
globs and folders, save_to_disk folders, the offline Hub error, the cache key, and a run."""

import json

import pytest

from csetrain.config import ConfigError
from csetrain.data.files import Files

from .helpers import csetrain_in_process, only_run, small_sts

TRIPLETS = [
    {
        "sent0": "A man plays a guitar.",
        "sent1": "Someone makes music.",
        "hard_neg": "Nobody plays.",
    },
    {"sent0": 'She said "hi", then left.', "sent1": "She greeted.", "hard_neg": "She stayed."},
    {"sent0": "Dogs run.", "sent1": "Animals move.", "hard_neg": "Dogs sleep."},
]
RECORDS = [
    {"anchor": r["sent0"], "positive": r["sent1"], "hard_negative": r["hard_neg"]} for r in TRIPLETS
]
COLUMNS = list(TRIPLETS[0])


def _csv(rows, sep=",", quote=True):
    def field(text):
        return (
            f'"{text.replace(chr(34), 2 * chr(34))}"'
            if quote and ('"' in text or sep in text)
            else text
        )

    return "\n".join(sep.join(field(v) for v in r) for r in rows) + "\n"


def write(path, rows_or_text, newline="\n", bom=False):
    text = rows_or_text if isinstance(rows_or_text, str) else _csv(rows_or_text)
    data = ("\ufeff" if bom else "") + text.replace("\n", newline)
    path.write_bytes(data.encode("utf-8"))
    return path


def save_dataset(folder, columns, dict_split=None):
    import datasets

    ds = datasets.Dataset.from_dict(columns)
    (datasets.DatasetDict({dict_split: ds}) if dict_split else ds).save_to_disk(str(folder))
    return folder


def by_columns(rows):
    return {c: [r[c] for r in rows] for c in rows[0]}


def make(fmt, tmp_path):
    """The TRIPLETS in format `fmt`; returns the data.path."""
    rows = [COLUMNS] + [[r[c] for c in COLUMNS] for r in TRIPLETS]
    if fmt == "csv":
        return write(tmp_path / "d.csv", rows)
    if fmt == "csv-bom-crlf":
        return write(tmp_path / "d.csv", _csv(rows), newline="\r\n", bom=True)
    if fmt == "tsv":  # no quoting: the `"` in row 2 is text
        return write(tmp_path / "d.tsv", _csv(rows, "\t", quote=False))
    if fmt == "jsonl":
        return write(tmp_path / "d.jsonl", "".join(json.dumps(r) + "\n" for r in TRIPLETS))
    if fmt == "json-array":
        return write(tmp_path / "d.json", json.dumps(TRIPLETS, indent=1))
    if fmt == "json-columns":
        return write(tmp_path / "d.json", json.dumps(by_columns(TRIPLETS)))
    if fmt == "json-lines":
        return write(tmp_path / "d.json", "".join(json.dumps(r) + "\n" for r in TRIPLETS))
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table(by_columns(TRIPLETS)), tmp_path / "d.parquet")
        return tmp_path / "d.parquet"
    if fmt == "save_to_disk":
        return save_dataset(tmp_path / "saved", by_columns(TRIPLETS))
    if fmt == "save_to_disk-dict":
        return save_dataset(tmp_path / "saved", by_columns(TRIPLETS), dict_split="train")
    raise AssertionError(fmt)


FORMATS = [
    "csv", "csv-bom-crlf", "tsv", "jsonl", "json-array", "json-columns", "json-lines",
    "parquet", "save_to_disk", "save_to_disk-dict",
]  # fmt: skip


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_gives_the_same_records(tmp_path, fmt):
    corpus = Files(str(make(fmt, tmp_path))).load()
    assert corpus.records == RECORDS
    assert corpus.fields == ("anchor", "positive", "hard_negative")
    assert corpus.tags == {
        "data.dropped_rows": "0",
        "data.columns": "anchor=sent0,positive=sent1,hard_negative=hard_neg",
        "data.hard_negatives": "1",
    }
    assert corpus.checksums and all(len(d) == 64 for d in corpus.checksums.values())


def test_text_lines_with_bom_crlf_and_blank_lines(tmp_path):
    path = write(tmp_path / "s.txt", "first line\n\n  second  \nin\u2028side\n", "\r\n", bom=True)
    corpus = Files(str(path)).load()
    assert corpus.records == [
        {"anchor": "first line"},
        {"anchor": "second"},
        {"anchor": "in\u2028side"},
    ]
    assert corpus.fields == ("anchor",)


def test_saved_dataset_dict_split_must_exist(tmp_path):
    folder = make("save_to_disk-dict", tmp_path)
    with pytest.raises(ConfigError, match=r"no split 'dev' — set data.split to one of \['train'\]"):
        Files(str(folder), split="dev").load()


@pytest.mark.parametrize(
    "header, roles",
    [
        ("anchor,positive,negative", ("anchor", "positive", "hard_negative")),
        ("anchor,positive", ("anchor", "positive")),
        ("Sent0,sent1,hard_neg", ("anchor", "positive", "hard_negative")),
        ("query,pos,neg,id", ("anchor", "positive", "hard_negative")),
        ("score,sentence1,sentence2", ("anchor", "positive")),
        ("text,label", ("anchor",)),
        ("id,sentence", ("anchor",)),
        ("question,answer", ("anchor", "positive")),  # two columns: a pair file
        ("only", ("anchor",)),
    ],
)
def test_layout_defaults(tmp_path, header, roles):
    names = header.split(",")
    values = {n: f"{n} text" for n in names}
    path = write(tmp_path / "d.csv", [names, [values[n] for n in names]])
    corpus = Files(str(path)).load()
    assert corpus.fields == roles
    expected = {"anchor", "positive", "hard_negative"} & set(roles)
    assert set(corpus.records[0]) == expected
    chosen = dict(kv.split("=") for kv in corpus.tags["data.columns"].split(","))
    assert {r: values[c] for r, c in chosen.items()} == corpus.records[0]


def test_three_unknown_columns_ask_for_a_mapping(tmp_path):
    path = write(tmp_path / "d.csv", [["a", "b", "c"], ["x", "y", "z"]])
    with pytest.raises(ConfigError) as err:
        Files(str(path)).load()
    assert str(err.value) == (
        f"{path}: columns ['a', 'b', 'c'] match no known layout — name the roles, e.g. "
        "data.columns='{anchor:a,positive:...}'"
    )


def test_explicit_mapping(tmp_path):
    rows = [["id", "query", "pos", "neg"], ["1", "q1", "p1", "n1"], ["2", "q2", "p2", "n2"]]
    path = write(tmp_path / "d.csv", rows)
    corpus = Files(str(path), columns={"anchor": "pos", "positive": "query"}).load()
    assert corpus.records == [
        {"anchor": "p1", "positive": "q1"},
        {"anchor": "p2", "positive": "q2"},
    ]
    assert corpus.fields == ("anchor", "positive")
    bad = {
        "hard_negative": "data.columns names no anchor column — add anchor: <column>",
        "negative": "data.columns: unknown roles ['negative'] — use ['anchor', 'positive', 'hard_negative']",
        "anchor": f"{path}: no column 'nope' for data.columns.anchor — its columns are ['id', 'query', 'pos', 'neg']",
    }
    for role, message in bad.items():
        with pytest.raises(ConfigError) as err:
            Files(str(path), columns={role: "nope"}).load()
        assert str(err.value) == message


def test_headerless_tsv_by_position(tmp_path):
    path = write(tmp_path / "pairs.tsv", 'a "quoted\tb\nc\td\n')
    corpus = Files(str(path), header=False, columns={"anchor": 1, "positive": 0}).load()
    assert corpus.records == [
        {"anchor": "b", "positive": 'a "quoted'},
        {"anchor": "d", "positive": "c"},
    ]
    corpus = Files(str(path), header=False).load()  # two columns: (anchor, positive)
    assert corpus.records[0] == {"anchor": 'a "quoted', "positive": "b"}


FIX = "delete the row, or set data.on_bad_row=drop"
BAD = [  # (file name, content, first error line after the path, rows dropped under `drop`)
    ("d.csv", "sent0,sent1\na,b\nc\n", "3: 1 fields, the header has 2 — fields containing ',' must be quoted, or fill in the missing ones", 1),
    ("d.csv", "sent0,sent1\na,b,c\nd,e\n", "2: 3 fields, the header has 2 — fields containing ',' must be quoted, or fill in the missing ones", 1),
    ("d.csv", "sent0,sent1\na,   \nc,d\n", "2: 'sent1' is empty — fill it in", 1),
    ("d.tsv", "sent0\tsent1\na\tb\tc\nd\te\n", "2: 3 fields, the header has 2 — remove stray tabs, or fill in the missing ones", 1),
    ("d.jsonl", '{"text": "ok"}\n{"text": 3}\n{"text": ["a", "b"]}\n{"text": null}\n{"other": "x"}\n[1]\n{bad\n{"text": true}\n',
     "2: 'text' is a number (3), not text — give it text", 7),
    ("d.jsonl", '{"text": "ok"}\n{"text": ["a", "b"]}\n', "2: 'text' is a list (['a', 'b']), not text — give it text", 1),
    ("d.jsonl", '{"text": "ok"}\n{"text": null}\n', "2: 'text' is null — give it text", 1),
    ("d.jsonl", '{"text": "ok"}\n{"other": "x"}\n', "2: no 'text' value — add it", 1),
    ("d.jsonl", '{"text": "ok"}\n{bad\n', "2: not valid JSON (Expecting property name enclosed in double quotes) — one JSON object a line", 1),
    ("d.jsonl", '{"text": "ok"}\n"just text"\n', '2: a JSON str, not an object — write {"column": "text", ...} on each line', 1),
    ("d.json", '[{"text": "ok"}, "x", {"text": ""}]', 'row 1: a JSON str, not an object — give each row as {"column": "text", ...}', 2),
    ("d.json", '{"text": ["ok", 7.5]}', "row 1: 'text' is a number (7.5), not text — give it text", 1),
]  # fmt: skip


@pytest.mark.parametrize("name, content, first, dropped", BAD)
def test_bad_rows_fail_with_file_row_and_fix_or_drop_and_count(
    tmp_path, name, content, first, dropped
):
    path = write(tmp_path / name, content)
    with pytest.raises(ConfigError) as err:
        Files(str(path)).load()
    assert str(err.value) == f"{path}:{first}, {FIX}"
    corpus = Files(str(path), on_bad_row="drop").load()
    assert corpus.tags["data.dropped_rows"] == str(dropped)
    texts = [v for r in corpus.records for v in r.values()]
    assert texts and all(isinstance(t, str) and t.strip() == t and t for t in texts)


def test_parquet_nulls_and_numbers_are_bad_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["ok", None, "fine"], "n": [1, 2, 3]}), tmp_path / "d.parquet")
    path = tmp_path / "d.parquet"
    with pytest.raises(ConfigError, match=rf"^{path}:row 1: 'text' is null — give it text, {FIX}$"):
        Files(str(path)).load()
    assert Files(str(path), on_bad_row="drop").load().records == [
        {"anchor": "ok"},
        {"anchor": "fine"},
    ]
    with pytest.raises(ConfigError, match=r":row 0: 'n' is a number \(1\), not text"):
        Files(str(path), columns={"anchor": "n"}).load()


def test_an_open_quote_fails_under_either_policy(tmp_path):
    path = write(tmp_path / "d.csv", 'sent0,sent1\na,"open\nb,c\nd,e\n')
    for policy in ("fail", "drop"):
        with pytest.raises(ConfigError) as err:
            Files(str(path), on_bad_row=policy).load()
        assert str(err.value) == (
            f"{path}:2: a quoted field runs from line 2 to line 4 — close the quote, or remove the line break inside it"
        )


def test_all_rows_bad_and_other_whole_file_errors(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"text": 1}\n{"text": 2}\n')
    with pytest.raises(ConfigError) as err:
        Files(str(path), on_bad_row="drop").load()
    assert str(err.value).startswith(
        f"data.path='{path}': no usable rows (2 bad rows dropped, the first: {path}:1: 'text' is a number (1)"
    )
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.txt:1: not valid UTF-8 \(byte 3\)"):
        Files(str(tmp_path / "latin1.txt")).load()
    with pytest.raises(
        ConfigError, match=r"^data.on_bad_row='skip': choose one of \['fail', 'drop'\]$"
    ):
        Files(str(path), on_bad_row="skip").load()
    with pytest.raises(ConfigError, match=r"d.xlsx: unknown format '.xlsx'"):
        Files(str(write(tmp_path / "d.xlsx", "x"))).load()
    with pytest.raises(ConfigError, match=r"no such file or folder"):
        Files(str(tmp_path / "missing.csv")).load()
    with pytest.raises(ConfigError, match=r"set exactly one"):
        Files(str(path), hub="org/name")


def test_folder_and_glob(tmp_path):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / ".hidden").mkdir()
    write(root / "a.csv", [["anchor", "positive"], ["a1", "p1"]])
    write(root / "sub" / "b.jsonl", '{"anchor": "a2", "positive": "p2"}\n')
    write(root / ".hidden" / "c.csv", [["anchor", "positive"], ["a3", "p3"]])
    write(root / "README.md", "not data")
    corpus = Files(str(root)).load()
    assert [r["anchor"] for r in corpus.records] == ["a1", "a2"]
    assert set(corpus.checksums) == {"a.csv", "sub/b.jsonl"}
    corpus = Files(f"{root}/*.csv").load()
    assert [r["anchor"] for r in corpus.records] == ["a1"] and set(corpus.checksums) == {"a.csv"}
    write(root / "a(1).csv", [["anchor", "positive"], ["a4", "p4"]])
    write(root / "a[1].csv", [["anchor", "positive"], ["a5", "p5"]])
    corpus = Files(f"{root}/a?1?.csv").load()
    assert set(corpus.checksums) == {"a_1_.csv", "a_1_.csv~1"}  # tag-safe names, none lost
    (root / "a(1).csv").unlink(), (root / "a[1].csv").unlink()
    assert len(Files(f"{root}/**/*.*l").load().records) == 1  # b.jsonl
    with pytest.raises(ConfigError, match=r"matches no file"):
        Files(f"{root}/*.parquet").load()
    write(root / "z.txt", "just a sentence\n")
    with pytest.raises(
        ConfigError,
        match=r"z.txt: gives roles \['anchor'\], earlier files \['anchor', 'positive'\]",
    ):
        Files(str(root)).load()


def test_cache_entry_follows_the_files_and_the_mapping(tmp_path, tiny_backbone):
    from csetrain.data.cache import tokenized_dataset

    tokenizer = tiny_backbone.tokenizer
    path = write(
        tmp_path / "d.csv", [["query", "doc"], ["first q", "first d"], ["second q", "second d"]]
    )
    cache = tmp_path / "cache"
    plain = tokenized_dataset(Files(str(path)).load(), tokenizer, cache)
    assert plain["anchor"] == ["first q", "second q"]
    swapped = Files(str(path), columns={"anchor": "doc", "positive": "query"}).load()
    assert tokenized_dataset(swapped, tokenizer, cache)["anchor"] == ["first d", "second d"]
    write(path, [["query", "doc"], ["other q", "other d"], ["second q", "second d"]])
    assert tokenized_dataset(Files(str(path)).load(), tokenizer, cache)["anchor"][0] == "other q"


def test_hub_offline_fails_with_one_line():
    with pytest.raises(ConfigError) as err:
        Files(hub="someone/no-such-dataset").load()
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(
        "data.hub='someone/no-such-dataset': cannot load it (offline mode: HF_DATASETS_OFFLINE / HF_HUB_OFFLINE is set): "
    )
    assert message.endswith("then use data.path=<folder>")


def test_train_two_steps_on_files_with_dropped_rows_tagged(tmp_path, mlflow_store):
    rows = [["q", "d", "n"]] + [[f"query {i}", f"document {i}", f"other {i}"] for i in range(12)]
    rows[5][1] = " "  # one empty positive: dropped
    path = write(tmp_path / "my data (v1).csv", rows)  # "(" is no MLflow tag character
    uri = mlflow_store(tmp_path / "mlflow.db")
    proc = csetrain_in_process(
        "train",
        "experiment=demo",
        "model=tiny",
        "objective=simcse_sup",
        "data=files",
        f"data.path='{path}'",  # Hydra's quoting, for the space and the parentheses
        "data.columns={anchor:q,positive:d,hard_negative:n}",
        "data.on_bad_row=drop",
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
    assert run.data.tags["data.dropped_rows"] == "1"
    assert run.data.tags["data.sentences"] == "11"
    assert run.data.tags["data.columns"] == "anchor=q,positive=d,hard_negative=n"
    assert len(run.data.tags["data.sha256.my data _v1_.csv"]) == 16


def test_the_roles_decide_which_objectives_can_train(tmp_path):
    path = write(tmp_path / "sentences.txt", "one sentence\nanother sentence\n")
    proc = csetrain_in_process(
        "train",
        "model=tiny",
        "objective=simcse_sup",
        "data=files",
        f"data.path={path}",
        "tracking=none",
        "eval=stsb_test",  # the small STS pack holds STS-B only
        f"paths.output_dir={tmp_path}/out",
        f"paths.data_dir={small_sts()}",
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: objective SimCSESup")
    assert (
        "needs data fields ['positive', 'hard_negative']" in last and "provides ['anchor']" in last
    )


def test_the_data_pack_reads_as_its_own_readers_read_it(data_dir):
    from csetrain.data.sources import TextLines, TripletCSV

    nli = "nli/snli_devtest_triplets.csv"
    assert (
        Files(str(data_dir / nli)).load().records == TripletCSV(nli, str(data_dir)).load().records
    )
    wiki = "wiki/wiki1m_head.txt"
    assert (
        Files(str(data_dir / wiki)).load().records
        == TextLines([wiki], str(data_dir)).load().records
    )


def test_hub_path_reads_what_load_dataset_returns(tmp_path, monkeypatch):
    import datasets

    # load_dataset also takes a local folder: the Hub code path, offline, with its cache in tmp.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    make("jsonl", tmp_path)
    corpus = Files(hub=str(tmp_path), split="train").load()
    assert corpus.records == RECORDS
    ((name, digest),) = corpus.checksums.items()  # the Arrow file load_dataset built
    assert name.startswith(f"{tmp_path}/") and name.endswith("-train.arrow") and len(digest) == 64
