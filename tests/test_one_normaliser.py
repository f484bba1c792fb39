"""One rule, one place: identity, export hashing, suppression and forget make one raw phone, e-mail and
WeChat open id into the same canonical value and the same hash."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from cdp.audiences.activation import export_frame, normalise_email, normalise_phone, sha256_hex
from cdp.identity.normalize import identifier_hash, normalize_email, normalize_phone, qualified
from cdp.jobs.forget import normalise_identifier
from cdp.jobs.standardize import normalize_identifiers
from cdp.privacy import hash_column, suppress
from cdp.privacy import sha256_hex as privacy_sha256_hex
from cdp.runtime.config import JobContext, Profile

REPO_CONF = Path(__file__).resolve().parents[1] / "conf"
RAW_PHONE = " +86 138-0013-8000 "
RAW_EMAIL = "  Wang.Fang@QQ.COM "
APPID, RAW_OPENID = "wx_app1", " oAbC12345678 "  # the source's qualifier and field
CANONICAL = {"phone": "+8613800138000", "email": "wang.fang@qq.com", "wechat_openid": "wx_app1:oAbC12345678"}


def _ctx(tmp_path: Path) -> JobContext:
    conf = tmp_path / "conf"
    conf.mkdir()
    shutil.copy(REPO_CONF / "identity.yaml", conf / "identity.yaml")
    return JobContext(conf_dir=conf, profile=Profile(name="local", lake=str(tmp_path)), lake_root=str(tmp_path),
                      run_id="r1")


def test_identity_export_suppression_and_forget_agree(spark, tmp_path):
    sha = {t: hashlib.sha256(v.encode()).hexdigest() for t, v in CANONICAL.items()}
    # identity: cdp standardize's normalisation, with the normalisers conf/identity.yaml names
    raw_ids = spark.createDataFrame(
        [("phone", RAW_PHONE, None), ("email", RAW_EMAIL, None), ("wechat_openid", RAW_OPENID, APPID)],
        "id_type string, raw_value string, qualifier string")
    identity = normalize_identifiers(raw_ids, {"phone": "phone", "email": "email", "wechat_openid": "trim"})
    assertDataFrameEqual(
        identity.select("id_type", "id_value", hash_column("id_value").alias("id_hash")),
        spark.createDataFrame([(t, v, sha[t]) for t, v in CANONICAL.items()], "id_type string, id_value string, "
                                                                              "id_hash string"))
    # forget: the --identifier value, normalised as standardize does, hashed for the suppression list
    ctx = _ctx(tmp_path)
    forgotten = {t: normalise_identifier(ctx, t, raw) for t, raw in
                 (("phone", RAW_PHONE), ("email", RAW_EMAIL), ("wechat_openid", f" {APPID}:{RAW_OPENID.strip()} "))}
    assert forgotten == CANONICAL
    assert {t: privacy_sha256_hex(v) for t, v in forgotten.items()} == sha
    # suppression: the list forget writes removes exactly these identifiers from identity's output
    suppression = spark.createDataFrame(
        [(t, privacy_sha256_hex(v), "erasure") for t, v in forgotten.items()], "id_type string, id_hash string, "
                                                                                 "list string")
    kept = spark.createDataFrame([("email", "other@qq.com")], "id_type string, id_value string")
    assertDataFrameEqual(suppress(identity.select("id_type", "id_value").unionByName(kept), suppression), kept)
    # export: raw contact values (as a profile might carry them), hashed for an ads destination
    members = spark.createDataFrame([("c1", RAW_EMAIL, RAW_PHONE, None, None)],
                                    "customer_id string, email string, phone string, wechat_openid string, "
                                    "device_id string")
    assertDataFrameEqual(export_frame(members, "ads", hashed=True),
                         spark.createDataFrame([("c1", sha["email"], sha["phone"], None)],
                                               "customer_id string, email_sha256 string, phone_sha256 string, "
                                               "device_id string"))
    wechat = members.withColumn("wechat_openid", F.lit(f" {CANONICAL['wechat_openid']} "))
    assertDataFrameEqual(export_frame(wechat, "wechat", hashed=True),
                         spark.createDataFrame([("c1", CANONICAL["wechat_openid"])],
                                               T.StructType([T.StructField("customer_id", T.StringType()),
                                                             T.StructField("wechat_openid", T.StringType())])))
    assert (normalise_email(RAW_EMAIL), normalise_phone(RAW_PHONE), sha256_hex(CANONICAL["email"]),
            sha256_hex(None)) == (CANONICAL["email"], CANONICAL["phone"], sha["email"], None)


@given(st.text(max_size=30))
def test_python_normalisers_are_the_same_functions_everywhere(raw):
    assert (normalise_email(raw), normalise_phone(raw)) == (normalize_email(raw), normalize_phone(raw))
    value = normalize_email(raw) or raw
    assert sha256_hex(value) == privacy_sha256_hex(value) == identifier_hash(value)


def test_qualified_prefixes_the_trimmed_app_id():
    assert (qualified("oAbC12345678", " wx_app1\t"), qualified("oAbC12345678", None), qualified(None, "wx")) == (
        "wx_app1:oAbC12345678", "oAbC12345678", None)
