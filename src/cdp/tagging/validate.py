"""Load-time validation of the catalogue against the feature schema (no Spark job runs)."""
from __future__ import annotations

import logging
import re
from dataclasses import replace

from pyspark.errors import AnalysisException
from pyspark.sql import SparkSession
from pyspark.sql import types as T

from cdp.tagging.algorithms import REGISTRY
from cdp.tagging.catalogue import IDENTIFIER, SPARK_TYPES, Catalogue, CatalogueError, Tag

logger = logging.getLogger(__name__)

_STRING_LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_TYPE_OK = {
    "boolean": lambda t: isinstance(t, T.BooleanType),
    "int": lambda t: isinstance(t, T.IntegralType),
    "double": lambda t: isinstance(t, T.NumericType),
    "string": lambda t: isinstance(t, T.StringType),
}


def referenced_names(sql: str, known: set[str]) -> list[str]:
    """Feature and tag names a SQL expression mentions (string literals ignored), in order."""
    text = _STRING_LITERAL.sub(" ", sql)
    seen: list[str] = []
    for name in IDENTIFIER.findall(text):
        if name in known and name not in seen:
            seen.append(name)
    return seen


def validate_catalogue(catalogue: Catalogue, feature_schema: T.StructType, lists, spark: SparkSession) -> Catalogue:
    """Check every tag against the features and the other tags; return the catalogue with lineage.

    Raises CatalogueError naming the tag's file and name for: a name that clashes with a feature,
    an unknown algorithm / output / model / feature, a cycle between tags, SQL that does not parse
    or reads an unknown column, and an expression whose type does not match the declared type.
    """
    features = {f.name for f in feature_schema.fields}
    tags = {t.name: t for t in catalogue.tags}
    known = features | set(tags)
    resolved: dict[str, Tag] = {}
    for tag in catalogue.tags:
        if tag.name in features:
            raise CatalogueError(f"{tag.where()}: the name is already a feature")
        for name in tag.declared_inputs:
            if name not in known:
                raise CatalogueError(f"{tag.where()}: unknown feature or tag {name!r} in inputs")
        if tag.kind == "rule":
            inputs = referenced_names(tag.sql or "", known - {tag.name})
            if tag.name in referenced_names(tag.sql or "", {tag.name}):
                raise CatalogueError(f"{tag.where()}: cycle between tags: {tag.name} -> {tag.name}")
        elif tag.kind == "algorithmic":
            algo = catalogue.algorithms.get(tag.algorithm or "")
            if algo is None:
                raise CatalogueError(f"{tag.where()}: unknown algorithm instance {tag.algorithm!r}; "
                                     f"known: {sorted(catalogue.algorithms)}")
            impl = REGISTRY.get(algo.type)
            if impl is None:
                raise CatalogueError(f"{algo.file}: algorithms.{algo.name}: unknown type {algo.type!r}; "
                                     f"known: {sorted(REGISTRY)}")
            if tag.output not in impl.outputs:
                raise CatalogueError(f"{tag.where()}: algorithm {algo.type!r} has no output {tag.output!r}; "
                                     f"outputs: {sorted(impl.outputs)}")
            if impl.outputs[tag.output] != tag.value_type:
                raise CatalogueError(f"{tag.where()}: type {tag.value_type!r} but output {tag.output!r} is "
                                     f"{impl.outputs[tag.output]!r}")
            try:
                inputs = impl.inputs(algo.params, lists, f"{algo.file}: algorithms.{algo.name}")
            except ValueError as exc:
                raise CatalogueError(str(exc)) from exc
            for name in inputs:
                if name not in features:
                    raise CatalogueError(f"{tag.where()}: unknown feature {name!r} (algorithm {algo.name})")
        else:
            spec = catalogue.models.get(tag.model or "")
            if spec is None:
                raise CatalogueError(f"{tag.where()}: unknown model {tag.model!r}; known: {sorted(catalogue.models)}")
            inputs = list(spec.inputs)
            for name in inputs:
                if name not in features:
                    raise CatalogueError(f"{spec.file}: models.{spec.name}: unknown feature {name!r}")
        resolved[tag.name] = replace(tag, inputs=tuple(dict.fromkeys([*inputs, *tag.declared_inputs])))
    for spec in catalogue.models.values():
        for name in spec.features:
            if name not in features:
                raise CatalogueError(f"{spec.file}: models.{spec.name}: unknown feature {name!r}")
    _check_cycles(resolved)
    _check_rule_sql([t for t in resolved.values() if t.kind == "rule"], resolved, feature_schema, spark)
    for spec in catalogue.models.values():
        _check_sql(spark, feature_schema, spec.population, f"{spec.file}: models.{spec.name}.population")
    return replace(catalogue, tags=tuple(resolved[t.name] for t in catalogue.tags))


def dependency_order(tags: dict[str, Tag]) -> list[list[Tag]]:
    """Rule tags grouped in levels: a tag's inputs are features, non-rule tags or rules of lower levels."""
    level: dict[str, int] = {}

    def depth(name: str) -> int:
        if name not in level:
            tag = tags[name]
            deps = [d for d in tag.inputs if d in tags and tags[d].kind == "rule"]
            level[name] = 1 + max((depth(d) for d in deps), default=-1)
        return level[name]

    rules = [t for t in tags.values() if t.kind == "rule"]
    for tag in rules:
        depth(tag.name)
    out: list[list[Tag]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for tag in rules:
        out[level[tag.name]].append(tag)
    return out


def _check_cycles(tags: dict[str, Tag]) -> None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in tags[name].inputs:
            if dep not in tags:
                continue
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep] if dep in path else [name, dep]
                raise CatalogueError(f"{tags[dep].where()}: cycle between tags: {' -> '.join(cycle)}")
            if state.get(dep) is None:
                visit(dep, [*path, dep])
        state[name] = 2

    for name in tags:
        if state.get(name) is None:
            visit(name, [name])


def _check_sql(spark: SparkSession, schema: T.StructType, sql: str, where: str) -> T.DataType:
    empty = spark.createDataFrame([], schema)
    try:
        return empty.selectExpr(f"({sql}) AS value").schema["value"].dataType
    except AnalysisException as exc:  # ParseException is an AnalysisException
        params = exc.getMessageParameters() or {}
        condition = exc.getCondition() or ""
        if condition.startswith("UNRESOLVED_COLUMN"):
            raise CatalogueError(f"{where}: unknown feature or tag {params.get('objectName')}") from exc
        if condition.startswith("PARSE_SYNTAX_ERROR") or "Parse" in type(exc).__name__:
            raise CatalogueError(f"{where}: SQL does not parse ({condition} near {params.get('error')}): {sql}") \
                from exc
        raise CatalogueError(f"{where}: invalid SQL ({condition}): {sql}") from exc


def _check_rule_sql(rules: list[Tag], tags: dict[str, Tag], feature_schema: T.StructType,
                    spark: SparkSession) -> None:
    # parse each value type once: a parse is a py4j round trip, and a catalogue has hundreds of tags
    spark_types = {v: T._parse_datatype_string(ddl) for v, ddl in SPARK_TYPES.items()}
    tag_fields = [T.StructField(t.name, spark_types[t.value_type]) for t in tags.values()]
    schema = T.StructType([*feature_schema.fields, *tag_fields])
    empty = spark.createDataFrame([], schema)
    try:  # all at once: one analysis for the whole catalogue in the usual case
        types = {f.name: f.dataType for f in empty.selectExpr(*[f"({t.sql}) AS {t.name}" for t in rules]).schema}
    except AnalysisException:
        types = {t.name: _check_sql(spark, schema, t.sql or "", t.where()) for t in rules}
    for tag in rules:
        if not _TYPE_OK[tag.value_type](types[tag.name]):
            raise CatalogueError(f"{tag.where()}: declared type {tag.value_type!r} but the SQL returns "
                                 f"{types[tag.name].simpleString()}")
