"""The data directory's one lookup order: ``$FEDKIT_DATA`` > ``../shared/data`` beside a source
checkout > ``~/.cache/fedkit``, and error messages that say truthfully which rule chose it."""

from __future__ import annotations

from pathlib import Path

import pytest

import fedkit.data.datasets.base as base
from fedkit.data.datasets import DatasetNotFoundError, load_dataset
from fedkit.data.datasets.base import data_root, data_root_lookup

CHECKOUT = Path(base.__file__).resolve().parents[4]


def test_fedkit_data_comes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDKIT_DATA", str(tmp_path))
    root, how = data_root_lookup()
    assert root == tmp_path and how == f"$FEDKIT_DATA={tmp_path}"


def test_shared_data_beside_the_checkout_then_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FEDKIT_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    shared = CHECKOUT.parent / "shared" / "data"
    root, how = data_root_lookup()
    if (CHECKOUT / "pyproject.toml").is_file() and shared.is_dir():  # this repository's CI
        assert root == shared and "beside the checkout" in how
    else:
        assert root == tmp_path / ".cache" / "fedkit" and "FEDKIT_DATA unset" in how
    # without the shared folder (a package installed elsewhere): the home cache
    fake = tmp_path / "site" / "fedkit" / "data" / "datasets" / "base.py"
    monkeypatch.setattr(base, "__file__", str(fake))
    root, how = data_root_lookup()
    assert root == tmp_path / ".cache" / "fedkit" == data_root()
    assert how.startswith(f"the default {root}") and "--data DIR" in how


def test_missing_file_says_which_rule_chose_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDKIT_DATA", str(tmp_path / "empty"))
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", cache_dir=tmp_path / "cache")
    assert f"$FEDKIT_DATA={tmp_path / 'empty'}" in str(info.value)
    with pytest.raises(DatasetNotFoundError) as info:  # --data DIR: not FEDKIT_DATA's
        load_dataset("mnist", root=tmp_path / "other", cache_dir=tmp_path / "cache")
    msg = str(info.value)
    assert "given explicitly" in msg and "FEDKIT_DATA" not in msg
