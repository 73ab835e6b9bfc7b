"""Faults and bad input: each gives one line naming the file/key and the fix, a non-zero exit,
and leaves nothing half-written."""

import pytest

from csetrain.app.context import check_writable
from csetrain.app.train import train
from csetrain.config import ConfigError
from csetrain.loop import TrainingDiverged

from .helpers import csetrain_cli, csetrain_in_process, shared_cache, small_sts
from .test_config import _compose


def _tiny(tmp_path, *extra):
    return _compose(
        [
            "experiment=demo",
            "model=tiny",
            "trainer.max_steps=4",
            "trainer.batch_size=8",
            "trainer.progress=false",
            "tracking=none",
            f"paths.output_dir={tmp_path}/out",
            f"paths.data_dir={small_sts()}",  # evaluation data: STS-B cut to 200 pairs
            f"paths.cache_dir={shared_cache()}",  # sample tokens, start scores: once
            *extra,
        ]
    )


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_state(tmp_path):
    cfg = _tiny(
        tmp_path,
        "trainer.lr=1e30",
        "trainer.max_grad_norm=0",
        "trainer.log_every=1",
        "trainer.eval_every=0",
        "trainer.save_every=1",
    )
    with pytest.raises(TrainingDiverged, match=r"loss is (nan|inf) at step \d: lower trainer.lr"):
        train(cfg)
    from safetensors.torch import load_file

    states = list((tmp_path / "out").glob("runs/*/checkpoints/last/encoder.safetensors"))
    for state in states:  # whatever state was kept is finite
        assert all(t.isfinite().all() for t in load_file(str(state)).values())


def test_output_dir_that_cannot_be_written_fails_before_any_work(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match=r"cannot write to .*a_file.*paths.output_dir"):
        check_writable(blocker / "run")
    with pytest.raises(ConfigError, match=r"MiB free under .*paths.output_dir"):
        check_writable(tmp_path / "run", min_free=1 << 62)


BAD_INPUTS = [
    (["model=nope"], "Could not find 'model/nope'"),
    (["trainer.lr=abc"], "config key 'trainer.lr'"),
    (["trainer.lrr=1"], "Could not override 'trainer.lrr'"),
    (["model=saved", "model.path=/nonexistent"], "is not a saved model folder"),
    (
        ["model=bert-base-uncased", "model.backbone.name_or_path=/no/such/model"],
        "cannot load model '/no/such/model'",
    ),
    (["paths.data_dir=/no/such/dir"], "data directory /no/such/dir does not exist"),
    (["data.files=[missing.txt]"], "corpus file not found"),
    (["objective=simcse_sup"], "needs data fields ['positive', 'hard_negative']"),
    (["paths.output_dir=/dev/null/x"], "cannot write to /dev/null/x"),
]


# Each case in this interpreter; the first also through a fresh `python -m csetrain`, the
# entry point a user runs (the other cases differ only after the entry point).
CASES = [(*BAD_INPUTS[0], csetrain_cli)] + [(*case, csetrain_in_process) for case in BAD_INPUTS]


@pytest.mark.parametrize(("overrides", "message", "run"), CASES)
def test_bad_input_is_one_line_with_exit_code_2(tmp_path, overrides, message, run):
    proc = run(  # a later key wins: the overrides come last
        "train",
        "experiment=demo",
        "model=tiny",
        "tracking=none",
        "trainer.max_steps=1",
        f"paths.output_dir={tmp_path}/out",
        *overrides,
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "out").glob("runs/*/checkpoints/*"))  # nothing half-written


def test_selecting_on_a_test_split_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="dev_eval scores a test split"):
        train(_tiny(tmp_path, "eval@dev_eval=stsb_test"))


def test_grad_cache_with_an_objective_that_cannot_chunk_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="rows are coupled.*grad_cache.chunk_size=0"):
        train(_tiny(tmp_path, "objective=whitenedcse", "trainer.grad_cache.chunk_size=4"))
