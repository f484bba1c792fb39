"""``cdp validate``: every config file parsed and cross-checked without Spark; every problem listed."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from cdp.jobs import validate as validate_job
from cdp.jobs.validate import sql_columns, validate_conf
from cdp.runtime.config import ConfigError, JobContext, Profile
from cdp.sources import SourcesConfig, spark_pattern_problem

REPO_CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture()
def conf(tmp_path: Path) -> Path:
    target = tmp_path / "conf"
    shutil.copytree(REPO_CONF, target)
    return target


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_the_shipped_configuration_is_consistent():
    report = validate_conf(REPO_CONF)
    assert report.problems == ()
    assert {Path(p).name for p in report.checked} >= {"identity.yaml", "sources.yaml", "features.yaml",
                                                      "quality.yaml", "value.yaml", "vip_winback_email.yaml",
                                                      "local.yaml"}


def test_every_problem_is_listed_with_its_file_and_key(conf: Path):
    _edit(conf / "sources.yaml", "{type: email, field: email}", "{type: e_mail, field: email}")
    _edit(conf / "tags" / "value.yaml", 'sql: "orders_count_{w.slug} > 0"', 'sql: "order_count_{w.slug} > 0"')
    _edit(conf / "audiences" / "vip_winback_email.yaml", "{tag: high_spender_365d", "{tag: high_spender_366d")
    _edit(conf / "quality.yaml", "value_set: $event_channels}", "value_set: $event_channel}")

    problems = validate_conf(conf).problems

    sources, value, audience, quality = (str(conf / "sources.yaml"), str(conf / "tags" / "value.yaml"),
                                         str(conf / "audiences" / "vip_winback_email.yaml"), str(conf / "quality.yaml"))
    assert [p for p in problems if p.startswith(sources)] == [
        f"{sources}: sources.crm_members.identifiers[3].type: unknown identifier type 'e_mail'; identity.yaml "
        "defines ['cookie_id', 'crm_id', 'device_id', 'email', 'member_id', 'order_id', 'phone', "
        "'wechat_openid', 'wechat_unionid']"]
    assert f"{value}: tag 'purchased_7d': sql: unknown column(s) ['order_count_7d']" in problems
    assert len([p for p in problems if p.startswith(value)]) == 6  # one per window of the template
    assert [p for p in problems if p.startswith(audience)] == [
        f"{audience}: where.all[1].tag: unknown tag 'high_spender_366d'"]
    (quality_problem,) = [p for p in problems if p.startswith(quality)]
    assert quality_problem.startswith(
        f"{quality}: suites.silver_events.checks[0].expectations[4].kwargs.value_set: unknown threshold "
        "'$event_channel', nor a vocabulary term (declared: "), quality_problem
    assert "'event_channels'" in quality_problem and "'identifier_types'" in quality_problem
    assert len(problems) == 9


def test_a_literal_list_in_a_suite_must_match_identity_yaml(conf: Path):
    _edit(conf / "quality.yaml", "kwargs: {column: id_type, value_set: $identifier_types}",
          "kwargs: {column: id_type, value_set: [member_id, phone, fax]}")
    quality = str(conf / "quality.yaml")
    assert validate_conf(conf).problems == (
        f"{quality}: suites.silver_identifiers.checks[0].expectations[1].kwargs.value_set: identifier types "
        "['fax', 'member_id', 'phone'] differ from identity.yaml's ['cookie_id', 'crm_id', 'device_id', 'email', "
        "'member_id', 'order_id', 'phone', 'wechat_openid', 'wechat_unionid'] (missing ['cookie_id', 'crm_id', "
        "'device_id', 'email', 'order_id', 'wechat_openid', 'wechat_unionid'], unknown ['fax'])",)


def test_sql_that_does_not_parse_names_the_tag(conf: Path):
    _edit(conf / "tags" / "value.yaml", 'sql: "orders_count_{w.slug} > 0"', 'sql: "orders_count_{w.slug} >> AND 0"')
    problems = validate_conf(conf).problems
    assert any(p.startswith(f"{conf / 'tags' / 'value.yaml'}: tag 'purchased_30d': sql: SQL does not parse")
               for p in problems), problems


def test_sql_columns_reads_columns_but_not_lambda_variables_or_literals():
    sql = "exists(array(a, b), x -> x > c) AND d = 'e' AND coalesce(f, 0) > 1"
    assert sql_columns(sql) == ["a", "b", "c", "d", "f"]


@pytest.mark.parametrize(("pattern", "problem"), [
    ("yyyy-MM-dd HH:mm:ss", None),
    ("yyyy/M/d'T'HH:mm", None),
    ("dd.MM.uuuu", None),
    ("YYYY-ww", "pattern 'YYYY-ww' uses 'Y', 'w', which Spark's datetime patterns do not support "
                "(week-based letters Y, w, W, e, c are refused)"),
    ("yyyy-MM-dd'T", "unbalanced quote in pattern \"yyyy-MM-dd'T\""),
])
def test_spark_datetime_patterns_are_checked(pattern, problem):
    assert spark_pattern_problem(pattern) == problem


def test_a_time_pattern_spark_cannot_parse_fails_when_the_sources_load_naming_the_field():
    data = {"sources": {"shop": {"path": "shop/*.csv", "format": "csv", "record_id": "id",
                                 "fields": {"id": "string", "paid": {"type": "timestamp", "format": "YYYY-MM-dd"}}}}}
    with pytest.raises(ValueError, match=r"^sources\.shop\.fields\.paid\.format: pattern 'YYYY-MM-dd' uses 'Y'"):
        SourcesConfig.from_dict(data)


def test_cdp_validate_exits_2_listing_problems_and_0_when_consistent(conf: Path, caplog):
    ctx = JobContext(conf_dir=conf, profile=Profile("local", "./lake"), lake_root="./lake", run_id="r1")
    assert validate_job.run(None, ctx) == 0
    _edit(conf / "audiences" / "vip_winback_email.yaml", "{tag: high_spender_365d", "{tag: high_spender_366d")
    with caplog.at_level(logging.ERROR, logger="cdp"):
        assert validate_job.main(["--conf", str(conf)]) == 2
    assert any("unknown tag 'high_spender_366d'" in r.getMessage() for r in caplog.records)


def test_cdp_run_refuses_a_bad_configuration_before_its_first_step(conf: Path, tmp_path: Path):
    from cdp.jobs import run as runner

    _edit(conf / "audiences" / "vip_winback_email.yaml", "{tag: high_spender_365d", "{tag: high_spender_366d")
    ctx = JobContext(conf_dir=conf, profile=Profile("local", str(tmp_path / "lake")),
                     lake_root=str(tmp_path / "lake"), run_id="r1")
    with pytest.raises(ConfigError, match="unknown tag 'high_spender_366d'"):
        runner.run(None, ctx, only=["land"], lake=object())
    assert not (tmp_path / "lake").exists()  # nothing ran, nothing was written
