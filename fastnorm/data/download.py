"""Fetch and unpack the official CIFAR-10 python archive.

    folder = download_cifar10()               # into default_data_dir(); returns the batches folder
    folder = download_cifar10(dest="data/")

The archive is streamed to a ``.part`` file while its MD5 is computed; only an
archive of the announced length with the expected checksum is renamed into
place, anything else is deleted and fetched again (``retries`` times). The
batches are extracted into a temporary folder and renamed into place, so
``cifar-10-batches-py`` is either complete or absent.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request

from tqdm import tqdm

from .._validate import real_in_range
from .cifar10 import FOLDER, TEST_BATCH, TRAIN_BATCHES, default_data_dir

__all__ = ["download_cifar10", "DownloadError", "CIFAR10_URL", "CIFAR10_MD5", "ARCHIVE_NAME", "md5sum"]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
_CHUNK = 1 << 20
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError)


class DownloadError(RuntimeError):
    """The archive could not be fetched intact."""


def md5sum(path) -> str:
    """Hex MD5 of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _complete(folder) -> bool:
    return all(os.path.isfile(os.path.join(folder, name)) for name in (*TRAIN_BATCHES, TEST_BATCH))


def _fetch(url, part, timeout, progress) -> str:
    """Stream url into `part`; returns the MD5 of what arrived. Raises DownloadError on a short body."""
    digest = hashlib.md5()
    received = 0
    with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        with tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(url),
                  disable=not progress, leave=False) as bar:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise DownloadError(f"got {received} of {total} bytes")
    return digest.hexdigest()


def _download(url, archive, md5, retries, timeout, progress, backoff):
    """Fetch url to `archive` (atomically), trying 1 + retries times; the last error is raised."""
    part = archive + ".part"
    errors = []
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * attempt)
        try:
            got = _fetch(url, part, timeout, progress)
            if md5 is not None and got != md5:
                raise DownloadError(f"MD5 {got} does not match the expected {md5}")
            os.replace(part, archive)
            return
        except (DownloadError, *_NETWORK_ERRORS) as exc:
            errors.append(f"attempt {attempt + 1}: {type(exc).__name__}: {exc}")
        finally:
            if os.path.exists(part):
                os.remove(part)  # a partial or corrupt download is never kept
    raise DownloadError(f"could not download {url} intact after {retries + 1} attempts:\n  " + "\n  ".join(errors))


def _extract(archive, dest, folder):
    """Unpack the batches folder of `archive` into dest, atomically."""
    tmp = tempfile.mkdtemp(dir=dest, prefix=".extract-")
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = [m for m in tar.getmembers() if m.name.split("/")[0] == FOLDER]
                unsafe = [m.name for m in members if not (m.isfile() or m.isdir()) or ".." in m.name.split("/")]
                if unsafe:
                    raise DownloadError(f"archive {archive} has unexpected entries {unsafe[:3]}")
                # the "data" filter (Python >= 3.10.12/3.11.4) refuses links and odd modes too
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(tmp, members=members, **safe)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DownloadError(f"archive {archive} could not be unpacked ({exc}); delete it and download again") from None
        if not _complete(os.path.join(tmp, FOLDER)):
            raise DownloadError(f"archive {archive} does not hold {FOLDER}/ with {', '.join((*TRAIN_BATCHES, TEST_BATCH))}")
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        os.replace(os.path.join(tmp, FOLDER), folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download_cifar10(dest=None, url=CIFAR10_URL, md5=CIFAR10_MD5, retries=3, timeout=60.0,
                     progress=True, force=False, backoff=1.0) -> str:
    """Download, verify and extract CIFAR-10; returns the path of its cifar-10-batches-py folder.

    dest : folder for the archive and the batches (default default_data_dir()).
    md5 : expected hex checksum of the archive (None skips the check).
    retries : further attempts after a failed, short or corrupt download.
    force : fetch and extract again even when the data is already there.
    Nothing is fetched when the batches folder is complete; an archive already
    in dest is reused when its checksum matches.
    """
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
    # checked now: urlopen would raise these as tracebacks, not as failed attempts
    timeout = real_in_range("timeout", timeout, 0.0, low_open=True)
    if md5 is not None and not (isinstance(md5, str) and len(md5) == 32
                                and all(c in "0123456789abcdef" for c in md5.lower())):
        raise ValueError(f"md5 must be 32 hex digits or None, got {md5!r}")
    md5 = md5 and md5.lower()  # hexdigest() is lower case
    try:
        urllib.request.Request(url)
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"url {url!r} is not a URL urllib can open ({exc})") from None
    dest = os.fspath(default_data_dir() if dest is None else dest)
    try:
        os.makedirs(dest, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot use {dest} as the data folder: {exc}") from None
    folder = os.path.join(dest, FOLDER)
    if _complete(folder) and not force:
        return folder
    archive = os.path.join(dest, ARCHIVE_NAME)
    have = os.path.isfile(archive) and not force and (md5 is None or md5sum(archive) == md5)
    if not have:
        _download(url, archive, md5, retries, timeout, progress, backoff)
    _extract(archive, dest, folder)
    return folder
