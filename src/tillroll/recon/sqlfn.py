"""The few SQL functions whose spelling differs between SQLite and PostgreSQL.

The matcher's queries are one SQLAlchemy Core expression each; these elements compile to each
dialect's own function so that the same query runs on both: a JSON object built in SQL (the
evidence), a JSON fragment kept as JSON (not quoted as a string), and seconds since the epoch
(for "within two minutes").
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Integer, String, Text
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ColumnElement, FunctionElement, cast, literal


class json_obj(FunctionElement[str]):
    """``json_obj("k1", v1, "k2", v2, ...)``: a JSON object as text."""

    type = Text()
    inherit_cache = True

    def __init__(self, *pairs: tuple[str, Any]) -> None:
        args: list[Any] = []
        for name, value in pairs:
            args.extend([literal(name, String()), value])
        super().__init__(*args)


@compiles(json_obj, "sqlite")
def _json_obj_sqlite(element: json_obj, compiler: SQLCompiler, **kw: Any) -> str:
    return f"json_object({compiler.process(element.clauses, **kw)})"


@compiles(json_obj, "postgresql")
def _json_obj_pg(element: json_obj, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(json_build_object({compiler.process(element.clauses, **kw)}) AS TEXT)"


class json_raw(FunctionElement[str]):
    """Text that is JSON, put into a ``json_obj`` as JSON (an object or a list), not as a string."""

    type = Text()
    inherit_cache = True


@compiles(json_raw, "sqlite")
def _json_raw_sqlite(element: json_raw, compiler: SQLCompiler, **kw: Any) -> str:
    return f"json({compiler.process(element.clauses, **kw)})"


@compiles(json_raw, "postgresql")
def _json_raw_pg(element: json_raw, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST({compiler.process(element.clauses, **kw)} AS JSON)"


class epoch_s(FunctionElement[int]):
    """Whole seconds since 1970 of a (naive UTC) timestamp column."""

    type = Integer()
    inherit_cache = True


@compiles(epoch_s, "sqlite")
def _epoch_sqlite(element: epoch_s, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(strftime('%s', {compiler.process(element.clauses, **kw)}) AS INTEGER)"


@compiles(epoch_s, "postgresql")
def _epoch_pg(element: epoch_s, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(EXTRACT(EPOCH FROM {compiler.process(element.clauses, **kw)}) AS BIGINT)"


def text_of(value: ColumnElement[Any]) -> ColumnElement[str]:
    """A column as text (a time's text differs between the two: evidence shows, never compares)."""
    return cast(value, String())
