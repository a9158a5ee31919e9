"""SQL pull: run the source's query for the night's window and stream the rows into one Parquet file.

Every value is written as text (the way a delimited extract carries it), so the pulled file goes
through the same source mapping, validation and rules as the same rows exported to CSV. The query
must order its rows: the same rows then give the same bytes, and a second pull of an unchanged
night is recognised by its checksum and processes nothing.
"""

from __future__ import annotations

import datetime as dt
import decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from b12pipeline.pull.config import PullSource
from b12pipeline.pull.errors import SourceUnreachable


def night_window(night: dt.date, lookback_days: int) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) in local wall-clock time: the reporting database stores the site's local times."""
    start = dt.datetime.combine(night - dt.timedelta(days=lookback_days), dt.time())
    return start, dt.datetime.combine(night + dt.timedelta(days=1), dt.time())


def as_text(value) -> str | None:
    """One cell as a delimited extract would carry it (1000.00 -> "1000", dates ISO)."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        text = format(value.normalize(), "f")
        return "0" if text in ("-0", "") else text
    if isinstance(value, float):
        return format(decimal.Decimal(repr(value)).normalize(), "f")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def text_column(values: tuple | list) -> pa.Array:
    """One column of a batch as text, vectorised by type (as_text is the rule, cell by cell)."""
    import pyarrow.compute as pc

    try:
        arr = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types in one column: cell by cell
        return pa.array([as_text(v) for v in values], pa.string())
    kind = arr.type
    if pa.types.is_null(kind):
        return pa.nulls(len(arr), pa.string())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return arr.cast(pa.string())
    if pa.types.is_timestamp(kind) and kind.tz is None:
        return pc.replace_substring_regex(arr.cast(pa.string()), pattern=r"\.\d+$", replacement="")
    if pa.types.is_decimal(kind):
        text = arr.cast(pa.string())
        text = pc.replace_substring_regex(text, pattern=r"^(-?\d+)\.0*$", replacement=r"\1")
        text = pc.replace_substring_regex(text, pattern=r"^(-?\d+\.\d*?)0+$", replacement=r"\1")
        return pc.replace_substring_regex(text, pattern=r"^-0$", replacement="0")
    if pa.types.is_date(kind) or pa.types.is_integer(kind):
        return arr.cast(pa.string())
    return pa.array([as_text(v) for v in values], pa.string())  # aware times, floats, bytes, booleans


def _engine(source: PullSource):
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    url = make_url(str(source.get("url")))
    password = source.password()
    if password is not None:
        url = url.set(password=password)
    return create_engine(url, hide_parameters=True)


def pull_sql(source: PullSource, night: dt.date, target: Path) -> int:
    """Write the night's rows to `target` (Parquet, all text) and return the row count.

    Streams `batch_rows` rows at a time (server-side cursor where the driver has one), so memory
    follows the batch, not the night. Raises SourceUnreachable when the database cannot be reached or
    the query fails; the message names the source and the kind of failure, never the URL's secrets.
    """
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    start, end = night_window(night, int(source.get("lookback_days", 0)))
    query = source.query_path(make_url(str(source.get("url"))).get_backend_name()).read_text()
    batch = int(source.get("batch_rows", 50_000))
    rows = 0
    writer: pq.ParquetWriter | None = None
    tmp = target.with_name(f".{target.name}.part")
    try:
        engine = _engine(source)
        try:
            with engine.connect() as conn:
                result = conn.execution_options(stream_results=True, yield_per=batch).execute(
                    text(query), {"start": start, "end": end}
                )
                names = list(result.keys())
                schema = pa.schema([(n, pa.string()) for n in names])
                writer = pq.ParquetWriter(tmp, schema, compression="zstd")
                for part in result.partitions(batch):
                    columns = list(zip(*part, strict=True)) if part else [() for _ in names]
                    table = pa.table([text_column(col) for col in columns], schema=schema)
                    writer.write_table(table)
                    rows += table.num_rows
                if rows == 0:
                    writer.write_table(schema.empty_table())
        finally:
            engine.dispose()
        writer.close()
        writer = None
        tmp.replace(target)
    except (DBAPIError, SQLAlchemyError, OSError) as exc:
        raise SourceUnreachable(source.name, _kind_of(exc)) from None
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return rows


def _kind_of(exc: Exception) -> str:
    """What failed, without the driver's text (it can quote the URL, the query's parameters or data)."""
    from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

    if isinstance(exc, OperationalError):
        return "cannot connect to the database or the connection failed"
    if isinstance(exc, ProgrammingError):
        return "the query failed (check the query file against the database's tables)"
    if isinstance(exc, DBAPIError):
        return f"the database refused the query ({type(exc.orig).__name__})"
    if isinstance(exc, OSError):
        return f"cannot write the pulled rows ({exc.strerror or type(exc).__name__})"
    return type(exc).__name__
