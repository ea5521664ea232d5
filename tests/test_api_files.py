"""``run.files()``, ``run.file(name)``, ``File.download()`` and ``run.metadata``.

Bytes come from the content-addressed blob cache; a listed but uncached file fails with
a message naming it and ``mirror sync --files``; names from the network never escape the
download folder.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirror.api import (
    Api,
    CommError,
    DownloadTargetExistsError,
    FileNotCachedError,
    RunFileNotFoundError,
)
from mirror.errors import UnsafePathError
from mirror.records import FileRecord, RunRecord
from mirror.store import Store, blobs
from mirror.store import runs as store_runs

E, P, R = "team", "audio", "r1"
METADATA = {"program": "train.py", "args": ["--lr", "0.1"], "host": "gpu-7",
            "git": {"commit": "abc123"}}
CACHED = {
    "wandb-metadata.json": json.dumps(METADATA).encode(),
    "model-best.h5": bytes(range(256)) * 40,
    "media/images/a.png": b"\x89PNG fake a",
    "media/images/b_1.png": b"\x89PNG fake b",
    "config.yaml": b"lr:\n  value: 0.1\n",
    "100%.txt": b"percent",
    "output.log": "épée ✓\n".encode(),
}


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


@pytest.fixture
def filled(store: Store) -> Store:
    with store.transaction() as s:
        pk = store_runs.save_run(s, RunRecord(entity=E, project=P, run_id=R, state="finished"))
        bare = store_runs.save_run(s, RunRecord(entity=E, project=P, run_id="bare"))
        for name, data in CACHED.items():
            info = blobs.put_bytes(store, data, session=s)
            store_runs.save_file(s, pk, FileRecord(
                name=name, size_bytes=info.size, md5=info.md5_b64, blob_hash=info.hash,
                mimetype="application/octet-stream", updated_at="2024-06-01T00:00:00Z",
                upstream_id=f"file-{name}", url=f"https://files.example/{name}",
            ))
        store_runs.save_file(s, pk, FileRecord(name="big/uncached.bin", size_bytes=10**9,
                                               md5="x"))
        store_runs.save_file(s, pk, FileRecord(name="gone.txt", size_bytes=3,
                                               tombstoned=True))
        for hostile in ("../escape.txt", "/abs.txt", "a\\b.txt", "sub/../../up.txt"):
            info = blobs.put_bytes(store, b"pwned", session=s)
            store_runs.save_file(s, bare, FileRecord(name=hostile, size_bytes=5,
                                                     blob_hash=info.hash))
    return store


@pytest.fixture
def api(filled: Store) -> Iterator[Api]:
    with Api(overrides={"store": str(filled.path)}) as a:
        yield a


@pytest.fixture
def run(api: Api):  # type: ignore[no-untyped-def]
    return api.run(f"{E}/{P}/{R}")


# --- listing -----------------------------------------------------------------------------


def test_files_lists_names_sizes_md5(run) -> None:  # type: ignore[no-untyped-def]
    files = run.files()
    names = [f.name for f in files]
    assert names == sorted([*CACHED, "big/uncached.bin"])  # tombstoned ones are gone
    assert len(files) == len(names)
    model = next(f for f in files if f.name == "model-best.h5")
    assert model.size == 10240 and model.md5 == md5_b64(CACHED["model-best.h5"])
    assert model.id == "file-model-best.h5" and model.url == "https://files.example/model-best.h5"
    assert model.mimetype == "application/octet-stream" and model.is_cached
    assert repr(model) == "<File model-best.h5 (application/octet-stream) 10240 bytes>"


def test_files_by_names_and_like_pattern(run) -> None:  # type: ignore[no-untyped-def]
    assert [f.name for f in run.files(names=["config.yaml", "nope"])] == ["config.yaml"]
    assert [f.name for f in run.files(pattern="%.png")] == ["media/images/a.png",
                                                          "media/images/b_1.png"]
    assert [f.name for f in run.files(pattern="media/images/_.png")] == ["media/images/a.png"]
    assert [f.name for f in run.files(pattern="%\\%%")] == ["100%.txt"]
    assert len(run.files(pattern="%.PNG")) == 2  # LIKE is case-insensitive, as in MySQL
    with pytest.raises(ValueError, match="both names and pattern"):
        run.files(names=["a"], pattern="%")


def test_files_page_by_name(run) -> None:  # type: ignore[no-untyped-def]
    files = run.files(per_page=3)
    assert [f.name for f in files] == [f.name for f in run.files()]
    assert len(files.objects) == 8


def test_file_by_name_and_missing(run) -> None:  # type: ignore[no-untyped-def]
    assert run.file("config.yaml").size == len(CACHED["config.yaml"])
    with pytest.raises(RunFileNotFoundError, match=r"model\.h5") as err:
        run.file("model.h5")
    assert isinstance(err.value, CommError) and isinstance(err.value, IndexError)


# --- download ----------------------------------------------------------------------------


def test_download_writes_the_cached_bytes(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "out"
    with run.file("media/images/a.png").download(root=str(root)) as fh:
        assert fh.name == str(root / "media" / "images" / "a.png")
    assert (root / "media/images/a.png").read_bytes() == CACHED["media/images/a.png"]
    with run.file("output.log").download(root=str(root)) as fh:
        assert fh.read() == "épée ✓\n"
    assert not [p for p in root.rglob("*") if p.name.startswith(".mirror-")]  # no temp left


def test_download_default_root_is_the_working_directory(run, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run.file("model-best.h5").download().close()
    assert (tmp_path / "model-best.h5").read_bytes() == CACHED["model-best.h5"]


def test_download_refuses_to_overwrite_unless_asked(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "config.yaml"
    target.write_text("local edit")
    with pytest.raises(DownloadTargetExistsError, match="pass replace=True") as err:
        run.file("config.yaml").download(root=str(tmp_path))
    assert isinstance(err.value, ValueError) and isinstance(err.value, CommError)
    with run.file("config.yaml").download(root=str(tmp_path), exist_ok=True) as fh:
        assert fh.read() == "local edit"
    run.file("config.yaml").download(root=str(tmp_path), replace=True).close()
    assert target.read_bytes() == CACHED["config.yaml"]


def test_uncached_file_names_itself_and_the_fix(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FileNotCachedError) as err:
        run.file("big/uncached.bin").download(root=str(tmp_path))
    text = str(err.value)
    assert "'big/uncached.bin'" in text and f"{E}/{P}/{R}" in text
    assert f"mirror sync --files {E}/{P}/{R}" in text
    assert not (tmp_path / "big").exists()


def test_blob_missing_from_disk_is_uncached(run, filled: Store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    f = run.file("100%.txt")
    blob = hashlib.sha256(CACHED["100%.txt"]).hexdigest()
    blobs.blob_path(filled, blob).unlink()
    assert not f.is_cached
    with pytest.raises(FileNotCachedError):
        f.download(root=str(tmp_path))


@pytest.mark.parametrize("name", ["../escape.txt", "/abs.txt", "a\\b.txt", "sub/../../up.txt"])
def test_hostile_names_never_escape_root(api: Api, tmp_path: Path, name: str) -> None:
    sandbox = tmp_path / "sandbox"  # (the store lives in tmp_path itself)
    f = api.run(f"{E}/{P}/bare").file(name)
    with pytest.raises(UnsafePathError):
        f.download(root=str(sandbox / "a" / "b" / "root"))
    assert not sandbox.exists() or [p for p in sandbox.rglob("*") if p.is_file()] == []
    assert not Path("/abs.txt").exists()


def test_symlinked_folder_cannot_redirect_a_download(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "media")
    with pytest.raises(UnsafePathError, match="outside"):
        run.file("media/images/a.png").download(root=str(root))
    assert list(outside.rglob("*")) == []


def test_delete_is_an_offline_edit(api: Api, run) -> None:  # type: ignore[no-untyped-def]
    """Deleting queues an op and the file leaves the local view at once."""
    assert "config.yaml" in {f.name for f in run.files()}
    run.file("config.yaml").delete()
    api.flush()
    again = api.run("/".join(run.path))
    assert "config.yaml" not in {f.name for f in again.files()}


# --- metadata -----------------------------------------------------------------------------


def test_metadata_comes_from_the_cache(api: Api, run) -> None:  # type: ignore[no-untyped-def]
    assert run.metadata == METADATA
    assert api.run(f"{E}/{P}/bare").metadata is None  # no such file: None, as wandb
