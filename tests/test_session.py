"""The session helper's JVM options: a profile's are appended to the launch's, never replace them."""
from __future__ import annotations

from cdp.runtime.session import merged_java_options


def test_profile_java_options_are_appended_to_what_the_launch_set():
    assert merged_java_options(None, "-XX:-DontCompileHugeMethods") == "-XX:-DontCompileHugeMethods"
    assert merged_java_options("", "-XX:-DontCompileHugeMethods") == "-XX:-DontCompileHugeMethods"
    assert merged_java_options("-Dlog4j.configuration=file:x.properties -XX:+UseG1GC",
                               "-XX:-DontCompileHugeMethods") == (
        "-Dlog4j.configuration=file:x.properties -XX:+UseG1GC -XX:-DontCompileHugeMethods")


def test_an_option_already_given_is_not_repeated():
    assert merged_java_options("-XX:-DontCompileHugeMethods -Xss4m",
                               "-Xss4m -XX:-DontCompileHugeMethods") == "-XX:-DontCompileHugeMethods -Xss4m"


def test_the_connect_url_comes_from_remote_then_spark_remote(monkeypatch):
    from cdp.runtime.session import remote_url

    monkeypatch.delenv("SPARK_REMOTE", raising=False)
    assert remote_url(None) is None  # a classic session
    monkeypatch.setenv("SPARK_REMOTE", "sc://from-env:15002")
    assert remote_url(None) == "sc://from-env:15002"
    assert remote_url("sc://from-flag:15002") == "sc://from-flag:15002"  # --remote wins


def test_every_job_takes_remote():
    from cdp.jobs.entry import base_parser

    assert base_parser("stitch").parse_args(["--remote", "sc://localhost:15002"]).remote == "sc://localhost:15002"
    assert base_parser("stitch").parse_args([]).remote is None
