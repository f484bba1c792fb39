"""Object-store settings (cdp.lake.storage) and raw-file discovery through pyarrow.fs (no Spark, no server)."""
from __future__ import annotations

import glob
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cdp.lake.storage import ObjectStore, filesystem

RAW_TREE = ["crm/a.csv", "crm/.hidden.csv", "crm/sub/b.csv", "orders/2024/x.jsonl", "orders/2024/y.txt",
            "orders/x.jsonl", "events/a/b/c.jsonl", "top.csv", "crm/b.csv"]


@pytest.mark.parametrize("pattern", ["crm/*.csv", "orders/*/*.jsonl", "**/*.csv", "events/**/*.jsonl", "orders/**",
                                     "crm/[ab].csv", "crm/[!a].csv", "crm/?.csv", "*.csv", "crm/.*.csv"])
def test_the_listing_matches_what_glob_matches(tmp_path, pattern):
    from cdp.jobs.land import _glob_regex

    for name in RAW_TREE:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    expected = sorted(os.path.relpath(match, tmp_path) for match in glob.glob(str(tmp_path / pattern), recursive=True)
                      if os.path.isfile(match))
    assert sorted(name for name in RAW_TREE if _glob_regex(pattern).match(name)) == expected


def test_discover_files_lists_local_files_with_their_fingerprints(tmp_path):
    import hashlib

    from cdp.jobs.land import RawFile, discover_files
    from cdp.sources import SourceSpec

    for name in RAW_TREE:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    source = SourceSpec(name="crm", path="crm/*.csv", format="csv", encoding="utf-8", csv_options={},
                        record_id=("id",), event_time=None, timezone="UTC", fields=())
    found = discover_files(source, str(tmp_path), Path("sources.yaml"), store=ObjectStore())
    expected = [RawFile(relpath=name, path=str(tmp_path / name), size=len(name),
                        mtime=datetime.fromtimestamp(os.stat(tmp_path / name).st_mtime, UTC),
                        sha256=hashlib.sha256(name.encode()).hexdigest()) for name in ("crm/a.csv", "crm/b.csv")]
    assert found == expected


def test_a_missing_raw_folder_is_a_config_error_naming_source_and_folder(tmp_path):
    from cdp.jobs.land import discover_files
    from cdp.runtime.config import ConfigError
    from cdp.sources import SourceSpec

    source = SourceSpec(name="crm", path="crm/*.csv", format="csv", encoding="utf-8", csv_options={},
                        record_id=("id",), event_time=None, timezone="UTC", fields=())
    with pytest.raises(ConfigError, match=r"sources.yaml: sources.crm.path: .*/crm does not exist"):
        discover_files(source, str(tmp_path), Path("sources.yaml"), store=ObjectStore())


def test_spark_settings_win_over_the_environment_and_the_environment_fills_the_rest():
    store = ObjectStore.from_settings(
        {"spark.hadoop.fs.s3a.endpoint": "http://minio:9000", "spark.hadoop.fs.s3a.access.key": "from-spark"},
        {"AWS_ENDPOINT_URL": "http://elsewhere:1", "AWS_ACCESS_KEY_ID": "from-env", "AWS_SECRET_ACCESS_KEY": "s3cret",
         "AWS_REGION": "eu-west-1"})
    assert store == ObjectStore(access_key="from-spark", secret_key="s3cret", endpoint="http://minio:9000",
                                region="eu-west-1")
    assert "s3cret" not in repr(store) and "from-spark" not in repr(store)


def test_one_set_of_settings_maps_onto_delta_rs_s3a_and_pyarrow():
    store = ObjectStore(access_key="AK", secret_key="SK", endpoint="http://127.0.0.1:9000")
    assert store.delta_rs() == {
        "AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ALLOW_HTTP": "true",
        "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false", "AWS_CONDITIONAL_PUT": "etag"}
    assert store.s3a() == {
        "spark.hadoop.fs.s3a.access.key": "AK", "spark.hadoop.fs.s3a.secret.key": "SK",
        "spark.hadoop.fs.s3a.endpoint": "http://127.0.0.1:9000",
        "spark.hadoop.fs.s3a.connection.ssl.enabled": "false",
        "spark.hadoop.fs.s3a.endpoint.region": "us-east-1", "spark.hadoop.fs.s3a.path.style.access": "true"}
    s3, path = filesystem("s3a://bucket/lake/t", store)
    assert (type(s3).__name__, path, s3.region) == ("S3FileSystem", "bucket/lake/t", "us-east-1")


def test_aws_without_endpoint_keeps_virtual_hosts_and_a_locking_provider_replaces_conditional_put():
    store = ObjectStore.from_settings({}, {"AWS_REGION": "eu-west-1", "AWS_S3_LOCKING_PROVIDER": "dynamodb"})
    assert store.delta_rs() == {"AWS_REGION": "eu-west-1", "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "true",
                                "AWS_S3_LOCKING_PROVIDER": "dynamodb"}
    assert store.s3a() == {"spark.hadoop.fs.s3a.endpoint.region": "eu-west-1",
                           "spark.hadoop.fs.s3a.path.style.access": "false"}


def test_local_paths_and_file_uris_open_the_local_filesystem(tmp_path):
    from pyarrow import fs as pafs

    for uri in (str(tmp_path), f"file://{tmp_path}"):
        local, path = filesystem(uri, ObjectStore())
        assert isinstance(local, pafs.LocalFileSystem) and path == str(tmp_path)
    with pytest.raises(ValueError, match="needs a bucket"):
        filesystem("s3a:///lake", ObjectStore())
