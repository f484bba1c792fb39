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
