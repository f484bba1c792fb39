"""Where object-store settings come from, and the one mapping of them onto each client that needs them.

The lake and the raw exports may live in S3 or an S3-compatible store (``s3a://bucket/lake``). Three
clients talk to it: Spark through Hadoop's S3A connector, delta-rs (the embedded backend's commits),
and pyarrow's filesystem (the tasks that read raw files and write Parquet, the lock, reports and
exports). Their settings are found once, in the standard places, and mapped onto each:

* Spark's ``spark.hadoop.fs.s3a.*`` settings (the profile's, or ``--conf``), then
* the AWS environment: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
  ``AWS_ENDPOINT_URL`` (``AWS_ENDPOINT_URL_S3``), ``AWS_REGION`` (``AWS_DEFAULT_REGION``).

Nothing is hard-coded: with neither, each client falls back to its own default chain (instance
profile, ``~/.aws``). :class:`ObjectStore` is a frozen value: the driver resolves it and Spark ships it
to the tasks with the functions that use it, so executors need no environment of their own.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

__all__ = ["ObjectStore", "S3_SCHEMES", "filesystem", "is_object_store"]

S3_SCHEMES = ("s3", "s3a", "s3n")
_PREFIX = "spark.hadoop.fs.s3a."
# Hadoop S3A key (after spark.hadoop.fs.s3a.) -> the environment variable that says the same thing
_SETTINGS = {
    "access.key": ("AWS_ACCESS_KEY_ID",),
    "secret.key": ("AWS_SECRET_ACCESS_KEY",),
    "session.token": ("AWS_SESSION_TOKEN",),
    "endpoint": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    "endpoint.region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
    "path.style.access": (),
    "connection.ssl.enabled": (),
}
# delta-rs settings that only delta-rs knows (a locking provider on AWS S3), passed through from the environment
_DELTA_RS_PASS_THROUGH = ("AWS_S3_LOCKING_PROVIDER", "DELTA_DYNAMO_TABLE_NAME", "AWS_S3_ALLOW_UNSAFE_RENAME",
                          "AWS_CONDITIONAL_PUT")


def is_object_store(uri: str) -> bool:
    """True for ``s3://``, ``s3a://`` and ``s3n://`` URIs."""
    return urlparse(uri).scheme in S3_SCHEMES


def _truthy(value: str | None) -> bool | None:
    if value is None or value == "":
        return None
    return value.strip().lower() in ("true", "1", "yes")


@dataclass(frozen=True)
class ObjectStore:
    """S3 connection settings; each field None when not given (the client's default then applies).

    ``endpoint`` is a URL (``http://127.0.0.1:9000``) or a host (``minio:9000``, then
    ``ssl_enabled`` says the scheme). ``path_style`` defaults to True with a custom endpoint, as
    S3-compatible servers expect, and to virtual-host addressing on AWS.
    """

    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None
    endpoint: str | None = None
    region: str | None = None
    path_style: bool | None = None
    ssl_enabled: bool | None = None
    delta_rs_extra: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:  # never print secrets into logs
        return (f"ObjectStore(endpoint={self.endpoint!r}, region={self.region!r}, "
                f"path_style={self.path_style!r}, credentials={'given' if self.access_key else 'default chain'})")

    # -- where settings come from ---------------------------------------------------------------
    @classmethod
    def from_settings(cls, spark_conf: Mapping[str, str] | Callable[[str], str | None] | None = None,
                      environ: Mapping[str, str] | None = None) -> ObjectStore:
        """Settings from Spark's ``spark.hadoop.fs.s3a.*`` keys first, then the AWS environment.

        Args:
            spark_conf: a mapping, or a ``get(key) -> value | None`` (``spark.conf.get``).
            environ: default ``os.environ``.
        """
        environ = os.environ if environ is None else environ
        if spark_conf is None:
            def get_conf(_key: str) -> str | None:
                return None
        elif callable(spark_conf):
            get_conf = spark_conf
        else:
            get_conf = spark_conf.get
        values: dict[str, str | None] = {}
        for key, env_names in _SETTINGS.items():
            value = get_conf(_PREFIX + key)
            if value in (None, ""):
                value = next((environ[name] for name in env_names if environ.get(name)), None)
            values[key] = value
        extra = tuple((name, environ[name]) for name in _DELTA_RS_PASS_THROUGH if environ.get(name))
        return cls(access_key=values["access.key"], secret_key=values["secret.key"],
                   session_token=values["session.token"], endpoint=values["endpoint"],
                   region=values["endpoint.region"], path_style=_truthy(values["path.style.access"]),
                   ssl_enabled=_truthy(values["connection.ssl.enabled"]), delta_rs_extra=extra)

    @classmethod
    def for_session(cls, spark: Any = None) -> ObjectStore:
        """Settings of ``spark`` (default: the active session, if any) and the environment."""
        if spark is None:
            from pyspark.sql import SparkSession

            spark = SparkSession.getActiveSession()
        if spark is None:
            return cls.from_settings()

        def get(key: str) -> str | None:
            try:
                return spark.conf.get(key, None)
            except Exception:  # noqa: BLE001 - an unreadable key is an absent one
                return None
        return cls.from_settings(get)

    # -- derived values -------------------------------------------------------------------------
    @property
    def endpoint_url(self) -> str | None:
        """The endpoint as a URL with its scheme."""
        if not self.endpoint:
            return None
        if "://" in self.endpoint:
            return self.endpoint.rstrip("/")
        return f"{'http' if self.ssl_enabled is False else 'https'}://{self.endpoint}"

    @property
    def uses_http(self) -> bool:
        return bool(self.endpoint_url and self.endpoint_url.startswith("http://"))

    @property
    def path_style_access(self) -> bool:
        return self.path_style if self.path_style is not None else self.endpoint is not None

    # -- one mapping per client -----------------------------------------------------------------
    def pyarrow(self, *, allow_bucket_creation: bool = False) -> Any:
        """A ``pyarrow.fs.S3FileSystem`` with these settings (buckets are never created unless asked)."""
        from pyarrow import fs as pafs

        kwargs: dict[str, Any] = {"allow_bucket_creation": allow_bucket_creation}
        if self.access_key and self.secret_key:
            kwargs.update(access_key=self.access_key, secret_key=self.secret_key)
            if self.session_token:
                kwargs["session_token"] = self.session_token
        if self.region:
            kwargs["region"] = self.region
        elif self.endpoint:
            kwargs["region"] = "us-east-1"  # S3-compatible servers ignore it; pyarrow would otherwise ask AWS
        url = self.endpoint_url
        if url:
            parsed = urlparse(url)
            kwargs.update(endpoint_override=parsed.netloc + parsed.path, scheme=parsed.scheme)
        kwargs["force_virtual_addressing"] = not self.path_style_access
        return pafs.S3FileSystem(**kwargs)

    def delta_rs(self) -> dict[str, str]:
        """``storage_options`` for delta-rs (``deltalake``)."""
        options: dict[str, str] = {}
        if self.access_key and self.secret_key:
            options.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key)
            if self.session_token:
                options["AWS_SESSION_TOKEN"] = self.session_token
        if self.region:
            options["AWS_REGION"] = self.region
        elif self.endpoint:
            options["AWS_REGION"] = "us-east-1"
        if self.endpoint_url:
            options["AWS_ENDPOINT_URL"] = self.endpoint_url
            if self.uses_http:
                options["AWS_ALLOW_HTTP"] = "true"
        options["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] = "false" if self.path_style_access else "true"
        extra = dict(self.delta_rs_extra)
        if not ({"AWS_S3_LOCKING_PROVIDER", "AWS_S3_ALLOW_UNSAFE_RENAME"} & set(extra)):
            # Safe concurrent commits without a lock service: the log entry is written with a
            # conditional put (If-None-Match), which S3 and S3-compatible servers (MinIO, R2) honour.
            extra.setdefault("AWS_CONDITIONAL_PUT", "etag")
        options.update(extra)
        return options

    def s3a(self) -> dict[str, str]:
        """``spark.hadoop.fs.s3a.*`` settings for Spark's S3A connector (hadoop-aws)."""
        conf: dict[str, str] = {}
        if self.access_key and self.secret_key:
            conf["access.key"] = self.access_key
            conf["secret.key"] = self.secret_key
            if self.session_token:
                conf["session.token"] = self.session_token
                conf["aws.credentials.provider"] = \
                    "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider"
        if self.endpoint_url:
            conf["endpoint"] = self.endpoint_url
            conf["connection.ssl.enabled"] = "false" if self.uses_http else "true"
        if self.region:
            conf["endpoint.region"] = self.region
        elif self.endpoint:
            conf["endpoint.region"] = "us-east-1"
        conf["path.style.access"] = "true" if self.path_style_access else "false"
        return {_PREFIX + key: value for key, value in conf.items()}


def filesystem(uri: str, store: ObjectStore | None = None) -> tuple[Any, str]:
    """A pyarrow filesystem and the path inside it for a local path or a URI.

    ``s3a://bucket/key`` (and ``s3://``) go to an S3 filesystem with ``store``'s settings (default:
    the active session's and the environment's); local paths and ``file://`` to the local filesystem;
    other URIs to whatever pyarrow makes of them.
    """
    from pyarrow import fs as pafs

    parsed = urlparse(uri)
    if parsed.scheme in S3_SCHEMES:
        if not parsed.netloc:
            raise ValueError(f"{uri}: an S3 URI needs a bucket (s3a://bucket/path)")
        store = store if store is not None else ObjectStore.for_session()
        return store.pyarrow(), f"{parsed.netloc}{parsed.path}".rstrip("/")
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme == "file" else uri
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    return pafs.FileSystem.from_uri(uri)
