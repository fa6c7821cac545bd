"""Path checks shared by every reader and writer: terarec works on the local file system only.

HugeCTR can read data from and write models to HDFS, S3 and GCS (``s3://...``, ``hdfs://...``,
``gs://...``, ``https://storage.googleapis.com/...``). terarec cannot: handed such a URL, a plain
``open``/``mkdir`` would create a local folder named ``s3:`` and write the model there, which
looks like success. :func:`check_local_path` is the single place that recognises such URLs;
every user-given path is passed through it before anything is read or written.
"""

from __future__ import annotations

import os
import re
from typing import Any

from terarec.errors import NotSupportedError

#: ``scheme://`` at the start of a path (RFC 3986 scheme syntax): s3://, hdfs://, gs://, https://
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
#: the same URL after ``pathlib.Path`` collapsed its ``//`` (``Path("s3://b/k")`` is ``s3:/b/k``)
_PATH_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):/")


def url_scheme(path: Any) -> str | None:
    """The URL scheme of ``path`` (``"s3"``, ``"hdfs"``, ...) or None for a local path."""
    pattern = _URL
    if isinstance(path, os.PathLike):
        path, pattern = os.fspath(path), _PATH_URL
    if not isinstance(path, str):
        return None
    match = pattern.match(path.strip())
    return match.group(1).lower() if match else None


def check_local_path(path: Any, where: str) -> Any:
    """Return ``path`` unchanged when it is local; raise :class:`NotSupportedError` for a URL.

    Args:
        path: a user-given file, folder or prefix (str or ``os.PathLike``; other types pass).
        where: the argument it came from, e.g. ``"Model.save_params_to_files(prefix=...)"``.

    Raises:
        NotSupportedError: ``path`` starts with ``scheme://`` (s3, hdfs, gs, http(s), file, ...).
    """
    scheme = url_scheme(path)
    if scheme is None:
        return path
    local = " (use the plain local path without 'file://')" if scheme == "file" else ""
    raise NotSupportedError(
        f"{where}: {os.fspath(path)!r} is a {scheme}:// URL; terarec does not support remote "
        f"file systems (HDFS, S3, GCS, HTTP){local}. Copy the files to a local disk (or mount "
        "the bucket, e.g. with s3fs / gcsfuse / an HDFS NFS gateway) and pass the local path.")


def check_local_paths(paths: Any, where: str) -> None:
    """:func:`check_local_path` on a path or on every entry of a list / tuple / dict values."""
    if isinstance(paths, dict):
        paths = list(paths.values())
    if isinstance(paths, (list, tuple)):
        for p in paths:
            check_local_path(p, where)
    else:
        check_local_path(paths, where)
