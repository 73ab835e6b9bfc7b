"""`csetrain export --push REPO_ID`: everything up to huggingface_hub's upload call (the hub
itself cannot be reached here): the folder it would send, and one-line refusals when offline,
unauthenticated or given a bad repo id."""

import pytest

from csetrain.app.hub import PushError, check_push, check_push_environment, files_to_push

from .helpers import csetrain_in_process


def _exported(tmp_path):
    folder = tmp_path / "model"
    (folder / "1_Pooling").mkdir(parents=True)
    for name in ("README.md", "modules.json", "config.json", "1_Pooling/config.json"):
        (folder / name).write_text("{}")
    (folder / ".model-tmp").mkdir()  # a scratch folder of an interrupted save: never sent
    (folder / ".model-tmp" / "x").write_text("x")
    return folder


def test_the_folder_it_would_send(tmp_path):
    folder = _exported(tmp_path)
    assert files_to_push(folder) == [
        "1_Pooling/config.json",
        "README.md",
        "config.json",
        "modules.json",
    ]


def test_offline_is_refused_in_one_line(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PushError, match=r"^cannot push to me/model: HF_HUB_OFFLINE is set"):
        check_push_environment("me/model")


def test_unauthenticated_is_refused_before_any_request(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    with pytest.raises(PushError, match="not logged in to the Hugging Face Hub"):
        check_push(_exported(tmp_path), "me/model")


def test_bad_repo_id_and_unexported_folder(monkeypatch, tmp_path):
    from huggingface_hub import constants

    with pytest.raises(PushError, match="a hub repo id is 'user/name'"):
        check_push_environment("no-slash")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_dummy")  # a token present: the folder check comes next
    with pytest.raises(PushError, match="not an exported model with its card"):
        check_push(tmp_path, "me/model")


def test_cli_push_offline_is_one_error_line(trained_2dmse_run, tmp_path):
    uri, run_id = trained_2dmse_run
    proc = csetrain_in_process(
        "export", run_id, "--uri", uri, "-e", "csetrain-demo", "--to", str(tmp_path / "m"),
        "--push", "me/tiny-2dmse",
    )  # fmt: skip
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: cannot push to me/tiny-2dmse: HF_HUB_OFFLINE is set")
    assert not (tmp_path / "m").exists()  # refused before any work
