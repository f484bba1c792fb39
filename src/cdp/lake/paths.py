"""Local paths versus remote URIs: the one place that decides which a lake root (or any path) is.

A root without a scheme, or with ``file://``, is local; ``s3a://``, ``abfss://``, ``hdfs://`` and the
like are remote. Everything that branches on that (the lake, the lock, the runner, the report) asks
here instead of parsing the URI itself.
"""
from __future__ import annotations

import os
from urllib.parse import urlparse

LOCAL_SCHEMES = ("", "file")


def is_local(uri: str) -> bool:
    """True for a plain path or a ``file://`` URI."""
    return urlparse(str(uri)).scheme in LOCAL_SCHEMES


def local_path(uri: str) -> str:
    """The absolute local path of a plain path or ``file://`` URI.

    Raises:
        ValueError: the URI is remote.
    """
    text = str(uri)
    parsed = urlparse(text)
    if parsed.scheme not in LOCAL_SCHEMES:
        raise ValueError(f"{text} is not a local path")
    return os.path.abspath(os.path.expanduser(parsed.path if parsed.scheme == "file" else text))


def normalize_root(root: str) -> str:
    """Local paths become absolute; URIs (s3a://, abfss://, hdfs://) stay, without a trailing slash."""
    return local_path(root) if is_local(root) else str(root).rstrip("/")


def spark_path(uri: str) -> str:
    """What Spark's readers and writers take: ``file://`` before an absolute local path."""
    return f"file://{uri}" if uri.startswith("/") else uri


def delta_rs_uri(uri: str) -> str:
    """What delta-rs takes: it speaks ``s3://`` where Hadoop speaks ``s3a://``."""
    return "s3://" + uri[len("s3a://"):] if uri.startswith("s3a://") else uri
