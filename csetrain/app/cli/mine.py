"""`csetrain mine`: offline hard-negative mining (csetrain/negatives/offline.py) with a frozen
teacher, written to a .jsonl that `data=files` trains on."""

from __future__ import annotations

from pathlib import Path

import typer

from csetrain.app.cli.common import (
    HYDRA_ARGS,
    OVERRIDES_HELP,
    app,
    compose_or_fail,
    fail,
    quiet_libraries,
)


def load_teacher(name: str, device: str):
    """A model option's encoder or a saved folder's, frozen, on the device."""
    from csetrain.app.settings import instantiate, model_option
    from csetrain.config import ConfigError
    from csetrain.modeling.export import load_sentence_encoder
    from csetrain.runtime import pick_device

    folder = Path(str(name)).expanduser()
    if folder.is_dir():
        teacher = load_sentence_encoder(folder)
    elif (option := model_option(str(name))) is not None:
        teacher = instantiate(option)
    else:
        raise ConfigError(
            f"mine.teacher='{name}' is neither a model option (`csetrain list model`) nor a saved model folder"
        )
    teacher.requires_grad_(False)
    return teacher.to(pick_device(device)).eval()


def read_texts(path: str) -> list[str]:
    """A candidate corpus: any file data=files reads; its anchor column (text, sentence, ...)."""
    from csetrain.data.files import Files

    return [r["anchor"] for r in Files(path=path, name="corpus").load().records]


def mine_job(cfg) -> dict:
    """Read the data (instruction not applied: the file keeps bare queries), mine, write."""
    from csetrain.app.settings import check_no_missing, instantiate, plain
    from csetrain.negatives.offline import mine_negatives, write_mined

    check_no_missing(cfg)
    opts = plain(cfg.mine)
    reader = plain(cfg.data)
    reader.pop("instruction", None)  # training applies it again when it reads the mined file
    records = instantiate(reader).load().records
    corpus = read_texts(opts["corpus"]) if opts["corpus"] else None
    rows, stats = mine_negatives(
        load_teacher(opts["teacher"], opts["device"]),
        records,
        k=opts["k"],
        fraction=opts["fraction"],
        depth=opts["depth"],
        corpus=corpus,
        batch_size=opts["batch_size"],
        query_prefix=opts["query_prefix"],
    )
    path = write_mined(rows, opts["output"], opts["layout"])
    return {**stats, "output": str(path)}


@app.command(
    context_settings=HYDRA_ARGS,
    help="Mine hard negatives once with a frozen teacher (TopK-PercPos) into a .jsonl for "
    f"data=files, e.g. `csetrain mine data=nli mine.output=nli_mined.jsonl`. {OVERRIDES_HELP}",
)
def mine(ctx: typer.Context) -> None:
    quiet_libraries()
    from csetrain.config import CsetrainError

    cfg = compose_or_fail("mine", ctx.args)
    try:
        stats = mine_job(cfg)
    except CsetrainError as err:
        fail(str(err))
    dropped = stats["rows"] - stats["kept"]
    typer.echo(
        f"mined {stats['kept']} of {stats['rows']} rows against {stats['candidates']} candidates "
        f"({dropped} dropped: fewer than mine.k survivors) -> {stats['output']}"
    )
