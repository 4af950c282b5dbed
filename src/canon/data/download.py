"""Where downloaded data lives, and fetching one file from a list of mirrors with a checksum.

The cache is ``~/.cache/canon/<name>``; the environment variable ``CANON_DATA_DIR`` replaces
``~/.cache/canon``. A file is written under a temporary name beside its destination and renamed
only once its checksum matches, so an interrupted or corrupted download never looks complete.
Any URL that ``urllib`` opens works as a mirror, ``file://`` included (the tests use that).
A transfer that ends before the ``Content-Length`` the server announced is a failure, not a
short file (``urllib`` itself returns the bytes it got without complaint).
``canon.weights.download`` uses the same function for released checkpoints, with a progress bar.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Callable, Sequence

from canon.data.core import data_error

__all__ = ["default_data_dir", "md5_of_file", "md5_of_gunzipped", "download_file", "md5_checker",
           "sha256_of_file"]

log = logging.getLogger("canon.data")

_CHUNK = 1 << 20
TIMEOUT_S = 60


def default_data_dir(name: str) -> Path:
    """``$CANON_DATA_DIR/<name>`` when that variable is set, else ``~/.cache/canon/<name>``."""
    root = os.environ.get("CANON_DATA_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "canon"
    return base / name


def md5_of_file(path: Path) -> str:
    """Hex md5 of the file's bytes."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_of_file(path: Path) -> str:
    """Hex SHA-256 of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def md5_of_gunzipped(path: Path) -> str | None:
    """Hex md5 of the decompressed content of a gzip file, or ``None`` if it does not gunzip."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with gzip.open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                digest.update(chunk)
    except (OSError, EOFError, zlib.error):
        return None
    return digest.hexdigest()


def _copy_response(response, out, url: str, progress: bool) -> None:
    """Stream ``response`` into the open file ``out``; a body shorter than its announced
    ``Content-Length`` raises ``OSError`` (the connection closed mid-transfer)."""
    length = response.headers.get("Content-Length") if getattr(response, "headers", None) else None
    total = int(length) if length and length.isdigit() else None
    received = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=url.rsplit("/", 1)[-1],
                   leave=False)
    try:
        for chunk in iter(lambda: response.read(_CHUNK), b""):
            out.write(chunk)
            received += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    if total is not None and received != total:
        raise OSError(f"transfer interrupted: received {received:,} of {total:,} bytes")


def download_file(urls: Sequence[str], dest: Path, verify: Callable[[Path], str | None], *,
                  progress: bool = False, hint: str | None = None) -> Path:
    """Fetch ``dest`` from the first of ``urls`` whose content passes ``verify``.

    ``verify(path)`` returns ``None`` when the file is right and otherwise a short reason
    (e.g. ``"md5 abc…, expected def…"``). Each mirror is tried in turn; when all fail, a
    ``DataError`` names ``dest`` and lists every URL with why it failed. Nothing is left at
    ``dest`` unless the check passed. ``progress``: a tqdm bar on stderr per transfer;
    ``hint``: the advice that ends the error (default: how to pass a local copy of a dataset).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        log.info("downloading %s -> %s", url, dest)
        fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                _copy_response(response, out, url, progress)
            problem = verify(tmp)
            if problem is None:
                os.replace(tmp, dest)
                return dest
            failures.append(f"{url}: {problem}")
        except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError is an OSError
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            failures.append(f"{url}: {reason}")
        finally:
            tmp.unlink(missing_ok=True)
    raise data_error(dest, "a download that passes its checksum", found="; ".join(failures) or "no mirrors",
                     hint=hint or "Check the network, or download the file yourself and pass --data-dir")


def md5_checker(gz_md5: str | None = None, content_md5: str | None = None) -> Callable[[Path], str | None]:
    """A ``verify`` for :func:`download_file`: the file's own md5 is ``gz_md5``, or its
    decompressed content's md5 is ``content_md5`` (gzip wrappers differ between mirrors; the
    content does not)."""
    if gz_md5 is None and content_md5 is None:
        raise ValueError("md5_checker needs gz_md5 or content_md5")

    def verify(path: Path) -> str | None:
        if gz_md5 is not None:
            actual = md5_of_file(path)
            if actual == gz_md5:
                return None
        if content_md5 is not None:
            actual_content = md5_of_gunzipped(path)
            if actual_content == content_md5:
                return None
            if gz_md5 is None:
                return f"decompressed md5 {actual_content}, expected {content_md5}"
            return f"md5 {actual}, decompressed md5 {actual_content}; expected {gz_md5} or decompressed {content_md5}"
        return f"md5 {actual}, expected {gz_md5}"

    return verify
