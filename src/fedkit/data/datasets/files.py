"""Source files: published checksums, verification, and download with an atomic rename.

Every file a loader reads is described by a :class:`RemoteFile` (its path under the data
directory, its published MD5 or SHA-256, and the canonical URLs, optionally as a member of an
archive). :func:`ensure_file` returns the verified path or raises an error saying exactly which
file to put where. Downloads go to a temporary file beside the destination, are verified, and
only then renamed into place, so an interrupted or wrong download never leaves a bad file behind.

Hashing a large file on every load costs time, so a successful verification is remembered as a
small *stamp* in the cache directory keyed by the file's absolute path, size, mtime and inode; a
changed (e.g. truncated) file has a different stamp and is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fedkit.data.datasets.base import (
    ChecksumError,
    CommonOptions,
    DatasetNotFoundError,
    data_root_lookup,
)

__all__ = [
    "FileStatus",
    "RemoteFile",
    "UnreachableError",
    "ensure_file",
    "file_digest",
    "file_status",
    "verify_file",
]

Algorithm = Literal["md5", "sha256"]
FileStatus = Literal["verified", "present", "missing", "corrupt"]
"""A local file against its :class:`RemoteFile`: checksum matches, not checked, absent, mismatch."""
_CHUNK = 1 << 20
_DOWNLOAD_TIMEOUT_S = 60.0


@dataclass(frozen=True, kw_only=True)
class RemoteFile:
    """A source file with its published checksum and where to get it.

    Attributes:
        relpath: path under the data directory, e.g. ``"mnist/train-images-idx3-ubyte.gz"``.
        algorithm: ``"md5"`` or ``"sha256"``.
        digest: the expected hex digest.
        urls: canonical URLs, tried in order.
        member: when set, each URL is an archive (``.tar.gz``, ``.tar.bz2``, ``.tgz``, ``.zip``)
            and the file is its member with this path (matched on the trailing path parts).
    """

    relpath: str
    algorithm: Algorithm
    digest: str
    urls: tuple[str, ...] = ()
    member: str | None = None

    def __post_init__(self) -> None:
        if self.algorithm not in ("md5", "sha256"):
            raise ValueError(f"RemoteFile.algorithm={self.algorithm!r}; allowed: 'md5', 'sha256'")
        width = 32 if self.algorithm == "md5" else 64
        if len(self.digest) != width or any(c not in "0123456789abcdef" for c in self.digest):
            raise ValueError(f"RemoteFile.digest={self.digest!r}: not a {self.algorithm} digest")

    @property
    def checksum(self) -> str:
        """``"<algorithm>:<digest>"``, the form used in messages and cache keys."""
        return f"{self.algorithm}:{self.digest}"

    @property
    def name(self) -> str:
        """The file name (last part of ``relpath``)."""
        return Path(self.relpath).name


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _stamp_path(path: Path, options: CommonOptions) -> Path:
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]
    return options.resolved_cache_dir / "verified" / f"{key}.json"


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def verify_file(path: Path, algorithm: str, digest: str, options: CommonOptions) -> None:
    """Check ``path`` against ``digest``, using (and refreshing) the verification stamp.

    Raises:
        ChecksumError: the content does not match; names the file, expected and actual digest.
    """
    stamp = _stamp_path(path, options)
    stat = _stat_key(path)
    if options.cache and not options.rehash and stamp.exists():
        try:
            saved = json.loads(stamp.read_text())
        except (OSError, ValueError):
            saved = None
        if saved == {**stat, "algorithm": algorithm, "digest": digest}:
            return
    actual = file_digest(path, algorithm)
    if actual != digest:
        raise ChecksumError(path, algorithm, digest, actual)
    if options.cache:
        atomic_write_bytes(
            stamp, json.dumps({**stat, "algorithm": algorithm, "digest": digest}).encode()
        )


def atomic_write_bytes(dest: Path, data: bytes) -> None:
    """Write ``data`` to ``dest`` through a temporary file and ``os.replace``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def where_root(root: Path) -> str:
    """How the data directory ``root`` was chosen, truthfully: the lookup rule that gives it
    (:func:`~fedkit.data.datasets.base.data_root_lookup`), else an explicit argument."""
    found, how = data_root_lookup()
    if Path(root).expanduser().resolve() == found.expanduser().resolve():
        return how
    return "given explicitly (--data DIR or root=)"


class UnreachableError(DatasetNotFoundError):
    """A missing file could not be downloaded because no URL's host could be reached (connection
    refused, no route, DNS failure or timeout), as opposed to a server that answered with an error.
    """


def file_status(
    remote: RemoteFile, root: Path, options: CommonOptions, *, verify: bool = True
) -> FileStatus:
    """The state of ``remote`` under the data directory ``root``, never raising for its content.

    ``"missing"`` when ``root / remote.relpath`` is not a file; otherwise, with ``verify``, the
    checksum decides between ``"verified"`` and ``"corrupt"`` (through :func:`verify_file`, so a
    remembered verification stamp makes this cheap); without ``verify`` a file is ``"present"``.
    """
    path = root / remote.relpath
    if not path.is_file():
        return "missing"
    if not verify:
        return "present"
    try:
        verify_file(path, remote.algorithm, remote.digest, options)
    except ChecksumError:
        return "corrupt"
    return "verified"


def _unreachable(error: BaseException) -> str | None:
    """The reason when ``error`` means the host was not reached at all (``None`` for an answer
    such as HTTP 404, or a broken archive, which a retry elsewhere will not fix)."""
    if isinstance(error, urllib.error.HTTPError):
        return None
    if isinstance(error, urllib.error.URLError):
        reason = error.reason
        return getattr(reason, "strerror", None) or str(reason)
    if isinstance(error, TimeoutError | ConnectionError):
        return str(error) or type(error).__name__
    return None


def not_found_message(remote: RemoteFile, root: Path, hint: str = "") -> str:
    """The text of a ``DatasetNotFoundError`` for ``remote``."""
    dest = root / remote.relpath
    where = ", ".join(remote.urls) if remote.urls else "no public URL"
    inside = f" (member {remote.member!r} of the archive)" if remote.member else ""
    msg = (
        f"dataset file {remote.name} not found: put the file with {remote.checksum} at {dest} "
        f"(data directory {root}: {where_root(root)}); canonical source: {where}{inside}"
    )
    if remote.urls:
        # a downloadable file's top folder is its dataset's name (checked against the catalog)
        dataset = remote.relpath.split("/")[0]
        msg += (
            f"; or fetch and verify it with `fedkit data download {dataset}` "
            f"(load_dataset({dataset!r}, download=True) from Python)"
        )
    if hint:
        msg += f". {hint}"
    return msg


def ensure_file(remote: RemoteFile, root: Path, options: CommonOptions, hint: str = "") -> Path:
    """Return the verified local path of ``remote``, downloading it if allowed.

    Args:
        remote: the file description.
        root: the data directory.
        options: common loader options (download, mirror, cache for stamps).
        hint: extra text for the not-found message.

    Raises:
        DatasetNotFoundError: the file is absent and download is off (or every URL failed).
        ChecksumError: the file (present or downloaded) has the wrong checksum.
    """
    dest = root / remote.relpath
    if dest.is_file():
        verify_file(dest, remote.algorithm, remote.digest, options)
        return dest
    if not options.download:
        raise DatasetNotFoundError(not_found_message(remote, root, hint))
    urls = list(remote.urls)
    if options.mirror is not None:
        last = remote.urls[0].rsplit("/", 1)[-1] if remote.urls else remote.name
        urls.insert(0, options.mirror.rstrip("/") + "/" + last)
    if not urls:
        raise DatasetNotFoundError(not_found_message(remote, root, hint))
    errors: list[str] = []
    reasons: list[str | None] = []
    for url in urls:
        try:
            _download_verified(url, remote, dest)
        except ChecksumError:
            raise
        except (OSError, urllib.error.URLError, tarfile.TarError, zipfile.BadZipFile) as e:
            errors.append(f"{url}: {e}")
            reasons.append(_unreachable(e))
            continue
        verify_file(dest, remote.algorithm, remote.digest, options)
        return dest
    if all(r is not None for r in reasons):
        hosts = ", ".join(dict.fromkeys(urllib.parse.urlsplit(u).netloc for u in urls))
        raise UnreachableError(
            f"cannot download {remote.name}: network unreachable ({hosts}: {reasons[-1]}); check "
            f"the connection or proxy, or give a reachable --mirror URL, or put the file with "
            f"{remote.checksum} at {dest}"
        )
    raise DatasetNotFoundError(
        not_found_message(remote, root, hint) + ". Download failed: " + "; ".join(errors)
    )


def _download_verified(url: str, remote: RemoteFile, dest: Path) -> None:
    """Fetch ``url`` (extracting ``remote.member`` if set), verify, then rename to ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmpdir:
        fetched = Path(tmpdir) / "download"
        with (
            urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response,
            open(fetched, "wb") as out,
        ):
            shutil.copyfileobj(response, out, _CHUNK)
        payload = fetched
        if remote.member is not None:
            payload = Path(tmpdir) / "member"
            _extract_member(fetched, remote.member, payload)
        actual = file_digest(payload, remote.algorithm)
        if actual != remote.digest:
            raise ChecksumError(url, remote.algorithm, remote.digest, actual)
        os.replace(payload, dest)


def _member_matches(name: str, member: str) -> bool:
    parts = Path(name).parts
    want = Path(member).parts
    return tuple(parts[-len(want) :]) == want


def _extract_member(archive: Path, member: str, out: Path) -> None:
    """Copy one regular-file member of a tar or zip archive to ``out`` (no path is created)."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir() and _member_matches(info.filename, member):
                    with zf.open(info) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst, _CHUNK)
                    return
    else:
        with tarfile.open(archive, "r:*") as tf:
            for tinfo in tf:
                if tinfo.isfile() and _member_matches(tinfo.name, member):
                    stream = tf.extractfile(tinfo)
                    if stream is None:
                        break
                    with stream, open(out, "wb") as dst:
                        shutil.copyfileobj(stream, dst, _CHUNK)
                    return
    raise FileNotFoundError(f"archive has no member {member!r}")
