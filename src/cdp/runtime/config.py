"""Loading YAML configuration into typed objects, with errors that name the file and key.

Domain packages own their config dataclasses and parse plain dicts (raising ``ValueError`` that
names the key path); this module is the only place that reads config files, and it adds the file
name to every error.
"""
from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import sqlglot
import yaml
from sqlglot import expressions as exp

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file is missing, unreadable or invalid. The message names file and key."""


def default_conf_dir() -> Path:
    """The ``conf/`` shipped with the package (used when neither --conf nor CDP_CONF is given)."""
    env = os.environ.get("CDP_CONF")
    if env:
        return Path(env)
    packaged = resources.files("cdp.conf")
    if Path(str(packaged)).is_dir():
        return Path(str(packaged))
    # Shipped inside a wheel or zip (spark-submit --py-files): unpack it once to a real folder.
    target = Path(tempfile.gettempdir()) / f"cdp-conf-{os.getuid()}-{os.getpid()}"
    _copy_tree(packaged, target)
    return target


def _copy_tree(source: Any, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.is_dir():
            _copy_tree(entry, target / entry.name)
        elif entry.name.endswith(".yaml"):
            (target / entry.name).write_bytes(entry.read_bytes())


def resolve_conf_dir(conf_dir: str | os.PathLike[str] | None) -> Path:
    path = Path(conf_dir) if conf_dir else default_conf_dir()
    if not path.is_dir():
        raise ConfigError(f"{path}: configuration directory does not exist")
    return path


def load_yaml(path: str | os.PathLike[str]) -> Any:
    """Read one YAML file with ``yaml.safe_load``; errors name the file (and line for syntax errors)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        with path.open(encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    return {} if data is None else data


def parse_file(path: str | os.PathLike[str], parser: Callable[[Any], T]) -> T:
    """Load ``path`` and hand its content to ``parser`` (a ``from_dict``); errors gain the file name."""
    data = load_yaml(path)
    try:
        return parser(data)
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def require_regex(value: Any, where: str) -> str:
    """A regular expression from a config file, compiled once to check it; ``ValueError`` naming ``where``."""
    import re

    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a regular expression string, got {value!r}")
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"{where}: invalid regular expression {value!r}: {exc}") from exc
    return value


def sql_references(sql: str) -> tuple[Any, list[tuple[str, ...]]]:
    """A Spark SQL expression parsed with sqlglot, and the column references it reads, each as its
    dotted parts (``buyer.phone`` -> ``("buyer", "phone")``), in reading order, once each; lambda
    variables are left out. ``ValueError`` when it does not parse."""
    try:
        tree = sqlglot.parse_one(sql, read="spark")
    except sqlglot.errors.ParseError as exc:
        first = exc.errors[0]["description"] if exc.errors else str(exc)
        raise ValueError(f"SQL does not parse: {first}") from exc
    lambda_variables = {identifier.name for node in tree.find_all(exp.Lambda) for identifier in node.expressions}
    references: list[tuple[str, ...]] = []
    for column in tree.find_all(exp.Column, bfs=False):  # in the order the expression reads them
        parts = tuple(part.name for part in column.parts)
        if (len(parts) == 1 and parts[0] in lambda_variables) or parts in references:
            continue
        references.append(parts)
    return tree, references


def read_lookup_csv(path: str | os.PathLike[str]) -> dict[str, str]:
    """A two-column CSV (a header, then key,value rows) as a dict; errors name the file and line."""
    import csv

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: lookup file not found")
    table: dict[str, str] = {}
    with path.open(encoding="utf-8-sig", newline="") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if number == 1 or not row:
                continue
            if len(row) != 2:
                raise ConfigError(f"{path}: line {number}: expected 2 columns (key,value), got {len(row)}")
            key = row[0].strip()
            if key in table and table[key] != row[1].strip():
                raise ConfigError(f"{path}: line {number}: key {key!r} is listed twice with different values")
            table[key] = row[1].strip()
    return table


def lookup_reader(config_file: str | os.PathLike[str]) -> Callable[[str], dict[str, str]]:
    """Reads lookup CSVs named relative to the folder of ``config_file`` (a map given as a file name)."""
    folder = Path(config_file).parent

    def read(name: str) -> dict[str, str]:
        return read_lookup_csv(folder / name)

    return read


def require(mapping: Any, key: str, where: str, kind: type | tuple[type, ...] | None = None) -> Any:
    """Fetch a required key from a dict, raising ``ValueError`` that names ``where.key``."""
    if not isinstance(mapping, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(mapping).__name__}")
    if key not in mapping or mapping[key] is None:
        raise ValueError(f"{where}.{key}: required key is missing")
    value = mapping[key]
    if kind is not None and not isinstance(value, kind):
        raise ValueError(f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


@dataclass(frozen=True)
class Profile:
    """An environment profile: where the lake lives and which Spark settings to apply."""

    name: str
    lake: str
    spark: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, name: str, data: Any) -> Profile:
        lake = require(data, "lake", "profile", str)
        spark = data.get("spark") or {}
        if not isinstance(spark, dict):
            raise ValueError("profile.spark: expected a mapping of Spark settings")
        return cls(name=name, lake=lake, spark={str(k): str(v) for k, v in spark.items()})


def load_profile(conf_dir: Path, name: str) -> Profile:
    path = conf_dir / "profiles" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (conf_dir / "profiles").glob("*.yaml"))
        raise ConfigError(f"{path}: unknown profile {name!r}; known profiles: {known}")
    return parse_file(path, lambda data: Profile.from_dict(name, data))


@dataclass(frozen=True)
class JobContext:
    """What every job gets besides the Spark session: where config and lake live, and the run id."""

    conf_dir: Path
    profile: Profile
    lake_root: str
    run_id: str

    def conf_path(self, *parts: str) -> Path:
        return self.conf_dir.joinpath(*parts)
