"""`csetrain export ... --push REPO_ID`: an exported folder uploaded to the Hugging Face Hub
through huggingface_hub's upload API. The only module importing huggingface_hub's upload side.

Everything before the upload is checked here, so an offline or unauthenticated machine gets
one line saying so, before any request: HF_HUB_OFFLINE set, no token, a malformed repo id,
or a folder without a card. (The upload itself cannot be tested without the hub.)
"""

from __future__ import annotations

import re
from pathlib import Path

from csetrain.config import CsetrainError

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
# Never sent: csetrain's scratch files (a hidden temp folder of an interrupted save).
IGNORE = [".*", "**/.*"]


class PushError(CsetrainError):
    """The folder cannot be pushed from here; one line says why and what to do."""


def files_to_push(folder: Path) -> list[str]:
    """The paths (relative, sorted) the upload would send."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def check_push_environment(repo_id: str) -> str:
    """The token to push with, or PushError: a malformed id, offline, not logged in."""
    from huggingface_hub import constants, get_token

    if not REPO_ID.match(repo_id):
        raise PushError(f"--push {repo_id}: a hub repo id is 'user/name' (or 'org/name')")
    if constants.HF_HUB_OFFLINE:
        raise PushError(
            f"cannot push to {repo_id}: HF_HUB_OFFLINE is set (no internet); export without --push and upload the folder from a machine online"
        )
    token = get_token()
    if not token:
        raise PushError(
            f"cannot push to {repo_id}: not logged in to the Hugging Face Hub; run `hf auth login` or set HF_TOKEN"
        )
    return token


def check_push(folder: Path, repo_id: str) -> str:
    """check_push_environment, and the folder is an exported model with its card."""
    token = check_push_environment(repo_id)
    if not (folder / "README.md").is_file() or not (folder / "modules.json").is_file():
        raise PushError(
            f"{folder} is not an exported model with its card: run csetrain export first"
        )
    return token


def push(folder: Path, repo_id: str, private: bool = True) -> str:
    """Create the repo if needed and upload the folder; the commit URL."""
    from huggingface_hub import HfApi

    token = check_push(folder, repo_id)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            commit_message="Upload sentence-transformers model exported by csetrain",
            ignore_patterns=IGNORE,
        )
    except Exception as err:  # network, permissions, quota: the hub's own reason, one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PushError(f"push to {repo_id} failed ({first}); the folder is at {folder}") from None
    return str(commit.commit_url)
