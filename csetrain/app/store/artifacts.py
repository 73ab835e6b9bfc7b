"""The calls a run makes on its store, with every artifact upload confirmed: after an upload the
store's listing must show each local file at its local size, so a store that kept a truncated
model (a full disk) or nothing at all is caught at the end of the run instead of trusted."""

from __future__ import annotations

import logging
import posixpath
from pathlib import Path

UPLOADS = ("log_artifact", "log_artifacts")
log = logging.getLogger(__name__)


class UploadIncomplete(Exception):
    """The store's copy of an artifact is missing or not the size of the local file."""

    rejected = True  # retrying an upload into a store that truncates it cannot help


def local_sizes(local: Path, artifact_path: str | None) -> dict[str, int]:
    """{artifact path: size} of what uploading `local` (a file or a folder) should store."""
    prefix = artifact_path or ""
    if local.is_file():
        return {posixpath.join(prefix, local.name): local.stat().st_size}
    return {
        posixpath.join(prefix, f.relative_to(local).as_posix()): f.stat().st_size
        for f in sorted(local.rglob("*"))
        if f.is_file()
    }


def stored_sizes(client, run_id: str, path: str | None) -> dict[str, int | None]:
    """{artifact path: size (None if the store does not say)} under `path`, recursively."""
    found: dict[str, int | None] = {}
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            found.update(stored_sizes(client, run_id, info.path))
        else:
            found[info.path] = info.file_size
    return found


def confirm_upload(client, run_id: str, local: Path, artifact_path: str | None) -> None:
    """Raise UploadIncomplete unless the store lists every file of `local` at its size; a store
    whose artifacts cannot be listed from here is trusted (logged at debug)."""
    expected = local_sizes(local, artifact_path)
    try:
        stored = stored_sizes(client, run_id, artifact_path)
    except Exception as err:  # a listing this machine cannot read: nothing to confirm against
        log.debug("artifacts of run %s not listable (%s); upload not confirmed", run_id, err)
        return
    for name, size in expected.items():
        if name not in stored:
            raise UploadIncomplete(f"{name} is missing from the store after its upload")
        if stored[name] is not None and stored[name] != size:
            raise UploadIncomplete(
                f"{name} is {stored[name]:,} bytes in the store but {size:,} bytes locally"
                " (store disk full?)"
            )


class StoreCalls:
    """`client.<call>(run_id, ...)` for the retry queue, artifact uploads confirmed."""

    def __init__(self, client) -> None:
        self.client = client

    def log_batch(self, run_id: str, metrics) -> None:
        self.client.log_batch(run_id, metrics=metrics)

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.client.set_tag(run_id, key, value)

    def set_terminated(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status)

    def log_artifact(self, run_id: str, local_file: str, artifact_path: str | None) -> None:
        self.client.log_artifact(run_id, local_file, artifact_path)
        confirm_upload(self.client, run_id, Path(local_file), artifact_path)

    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str | None) -> None:
        self.client.log_artifacts(run_id, local_dir, artifact_path)
        confirm_upload(self.client, run_id, Path(local_dir), artifact_path)
