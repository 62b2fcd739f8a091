"""`fedkit data list` and `fedkit data download` against a local HTTP server and a closed port."""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedkit.data.cli import app
from fedkit.data.datasets import DATASETS, CommonOptions, DatasetNotFoundError
from fedkit.data.datasets import catalog as catalog_module
from fedkit.data.datasets.catalog import CATALOG, FileSet, dataset_status, download_dataset
from fedkit.data.datasets.files import RemoteFile, UnreachableError, ensure_file, file_status
from fedkit.data.datasets.mnist import MNIST_FILES
from tests.conftest import require_data
from tests.helpers.www import serve_folder

pytestmark = pytest.mark.net

runner = CliRunner()

GOOD = b"the published bytes of file a" * 50
OTHER = b"the published bytes of file b" * 50


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 serving ``tmp_path / "www"``; yields (base URL, folder)."""
    with serve_folder(tmp_path) as served:
        yield served


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toy(base: str) -> tuple[FileSet, ...]:
    """A two-file dataset served from ``base``, plus a one-file alternative with no URL."""
    a = RemoteFile(
        relpath="toy/a.bin",
        algorithm="sha256",
        digest=hashlib.sha256(GOOD).hexdigest(),
        urls=(f"{base}/a.bin",),
    )
    b = RemoteFile(
        relpath="toy/b.bin",
        algorithm="md5",
        digest=hashlib.md5(OTHER).hexdigest(),
        urls=(f"{base}/b.bin",),
    )
    npz = RemoteFile(
        relpath="toy/arrays.npz", algorithm="sha256", digest=hashlib.sha256(b"npz").hexdigest()
    )
    return (FileSet("pair", (a, b)), FileSet("arrays", (npz,)))


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Stamps in a temporary cache, so no test reads or writes ~/.cache/fedkit."""
    monkeypatch.setenv("FEDKIT_CACHE", str(tmp_path / "cache"))
    yield


def _list(root: Path, *extra: str) -> dict[str, dict[str, object]]:
    result = runner.invoke(app, ["list", "--data", str(root), "--json", *extra])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["data_dir"] == str(root) and doc["rule"] == "--data"
    return {d["name"]: d for d in doc["datasets"]}


def test_catalog_names_every_dataset() -> None:
    # a dataset added to DATASETS without a catalog entry would be missing from `data list`
    assert list(CATALOG) == list(DATASETS)


def test_missing_file_message_names_the_download_command(tmp_path: Path) -> None:
    # the message derives the dataset from a downloadable file's top folder: true for every one
    for name, sets in CATALOG.items():
        for remote in (r for fs in sets[:1] for r in fs.files if r.urls):
            assert remote.relpath.split("/")[0] == name, remote
    with pytest.raises(DatasetNotFoundError, match="`fedkit data download mnist`"):
        ensure_file(MNIST_FILES["x_train"], tmp_path, CommonOptions(cache_dir=tmp_path / "c"))


def test_file_status_distinguishes_the_four_states(toy: None, tmp_path: Path) -> None:
    a = _toy("http://unused")[0].files[0]
    opts = CommonOptions()
    assert file_status(a, tmp_path, opts) == "missing"
    (tmp_path / "toy").mkdir()
    (tmp_path / a.relpath).write_bytes(GOOD[:-1])  # truncated by one byte
    assert file_status(a, tmp_path, opts) == "corrupt"
    assert file_status(a, tmp_path, opts, verify=False) == "present"
    (tmp_path / a.relpath).write_bytes(GOOD)
    assert file_status(a, tmp_path, opts) == "verified"


def test_download_then_list_through_the_cli(
    toy: None, server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, www = server
    (www / "a.bin").write_bytes(GOOD)
    (www / "b.bin").write_bytes(OTHER)
    monkeypatch.setitem(catalog_module.CATALOG, "toy", _toy(url))
    root = tmp_path / "data"
    before = _list(root)["toy"]
    assert before["status"] == "missing" and before["source"] == "pair"
    result = runner.invoke(app, ["download", "toy", "--data", str(root)])
    assert result.exit_code == 0, result.output
    assert "toy: 2 file(s) verified" in result.stdout
    assert (root / "toy" / "a.bin").read_bytes() == GOOD
    assert (root / "toy" / "b.bin").read_bytes() == OTHER
    after = _list(root)["toy"]
    assert after["status"] == "verified"
    assert after["files"] == [
        {"path": "toy/a.bin", "status": "verified"},
        {"path": "toy/b.bin", "status": "verified"},
    ]
    # one file damaged in place: the dataset is corrupt, and the table says which file
    (root / "toy" / "b.bin").write_bytes(OTHER + b"!")
    assert _list(root)["toy"]["status"] == "corrupt"
    table = runner.invoke(app, ["list", "--data", str(root)])
    assert f"corrupt: {root / 'toy' / 'b.bin'}" in table.stdout.replace("\n", "")


def test_list_prefers_a_complete_alternative(toy: None, tmp_path: Path) -> None:
    sets = _toy("http://unused")
    opts = CommonOptions()
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "a.bin").write_bytes(GOOD)  # half of the first set
    (tmp_path / "toy" / "arrays.npz").write_bytes(b"npz")  # all of the second
    catalog = dict(CATALOG, toy=sets)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(catalog_module, "CATALOG", catalog)
        st = dataset_status("toy", tmp_path, opts)
        assert (st.status, st.source) == ("verified", "arrays")
        (tmp_path / "toy" / "arrays.npz").unlink()
        st = dataset_status("toy", tmp_path, opts)
        # no complete set: the first (downloadable) one is reported, with its missing file
        assert st.status == "missing" and st.source == "pair"
        assert st.files == (("toy/a.bin", "verified"), ("toy/b.bin", "missing"))


def test_closed_port_is_one_clear_line(
    toy: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = _closed_port()
    monkeypatch.setitem(catalog_module.CATALOG, "toy", _toy(f"http://127.0.0.1:{port}"))
    root = tmp_path / "data"
    result = runner.invoke(app, ["download", "toy", "--data", str(root)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: cannot download a.bin: network unreachable")
    assert f"127.0.0.1:{port}" in lines[0] and "--mirror" in lines[0]
    assert not (root / "toy" / "a.bin").exists()
    with pytest.raises(UnreachableError):
        download_dataset("toy", root, CommonOptions(cache_dir=tmp_path / "cache"))


def test_http_404_is_not_called_unreachable(
    toy: None, server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = server  # serves nothing: every file is a 404
    monkeypatch.setitem(catalog_module.CATALOG, "toy", _toy(url))
    with pytest.raises(DatasetNotFoundError, match="404") as info:
        download_dataset("toy", tmp_path / "data", CommonOptions(cache_dir=tmp_path / "cache"))
    assert not isinstance(info.value, UnreachableError)


def test_mirror_option_and_real_mnist(toy: None, server: tuple[str, Path], tmp_path: Path) -> None:
    real = require_data(*[r.relpath for r in MNIST_FILES.values()])
    url, www = server
    for remote in MNIST_FILES.values():
        (www / remote.name).symlink_to(real / remote.relpath)
    root = tmp_path / "data"
    result = runner.invoke(app, ["download", "mnist", "--data", str(root), "--mirror", url])
    assert result.exit_code == 0, result.output
    assert _list(root)["mnist"]["status"] == "verified"


def test_not_downloadable_and_unknown_names(tmp_path: Path) -> None:
    for name, text in (("femnist", "LEAF"), ("shakespeare_leaf", "no public download")):
        result = runner.invoke(app, ["download", name, "--data", str(tmp_path)])
        assert result.exit_code == 1 and text in result.stderr
    result = runner.invoke(app, ["download", "mnits", "--data", str(tmp_path)])
    assert result.exit_code == 2 and "known: mnist" in result.stderr


def test_list_names_the_lookup_rule(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEDKIT_DATA", str(tmp_path))
    result = runner.invoke(app, ["list", "--json", "--no-verify"])
    doc = json.loads(result.stdout)
    assert doc["data_dir"] == str(tmp_path) and doc["rule"] == f"$FEDKIT_DATA={tmp_path}"
    statuses = {d["name"]: d["status"] for d in doc["datasets"]}
    assert statuses["synthetic"] == "generated" and statuses["mnist"] == "missing"
