"""The ``table`` layout: the rows of a Spark SQL table or query, filtered to the partition (``TableInput``,
``table_frame``), listed into records with a Spark session (``list_table``): the query runs on the executors and
the driver collects each row's id, label, size and digest; image paths are looked up on the executors.
"""

from __future__ import annotations

import dataclasses

from tasks.io import storage
from tasks.prep.layouts import PrepError, RawPartition, RawRecord, mark_duplicates, table_record


@dataclasses.dataclass(frozen=True)
class TableInput:
    """Where the rows of the table layout come from, and which of them belong to the partition."""

    table: str = ""
    """A table or view of the Spark catalog, ``[database.]name``; or else:"""
    query: str = ""
    """A Spark SQL query (filters and joins are the query's); ``:ds`` in it is the partition's date, bound as a
    named parameter (never pasted into the text)."""
    partition_column: str = ""
    """Keep only the rows whose column equals the partition's date; empty: every row the table or query gives."""
    partition_value: str = ""
    """The partition's date, ``YYYY-MM-DD``: the value of ``:ds`` and of ``partition_column``."""
    image_root: str = ""
    """Storage URL the image column's paths are relative to; empty: the image column holds the encoded bytes."""

    @property
    def name(self) -> str:
        """Short name of the input in record sources: the table, or ``query``."""
        return self.table or "query"

    def describe(self) -> str:
        what = f"table {self.table}" if self.table else f"query ({' '.join(self.query.split())})"
        if self.partition_column:
            what += f" where {self.partition_column} = '{self.partition_value}'"
        return what


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def table_frame(spark, source: TableInput):
    """The DataFrame of a table input, filtered to the partition.

    Raises:
        PrepError: the table is not in the catalog, the query does not parse or resolve, or the partition column
            is missing.
    """
    from pyspark.errors import PySparkException

    if bool(source.table) == bool(source.query):
        raise PrepError("the table layout reads a catalog table (--table) or a query (--query): set exactly one, "
                        f"got table={source.table!r} and query={source.query!r}")
    try:
        if source.table:
            df = spark.table(source.table)
        else:
            df = spark.sql(source.query, args={"ds": source.partition_value})
    except PySparkException as e:
        if source.table:
            catalog = spark.conf.get("spark.sql.catalogImplementation", "in-memory")
            raise PrepError(f"--table {source.table}: not readable from the Spark catalog ({catalog} catalog, "
                            f"warehouse {spark.conf.get('spark.sql.warehouse.dir', '?')}): {_first_line(e)}. "
                            "Create the table, or point spark.sql.catalogImplementation and the metastore settings "
                            "at the catalog that has it") from e
        raise PrepError(f"--query does not run: {_first_line(e)}; query: {' '.join(source.query.split())}") from e
    if source.partition_column:
        if source.partition_column not in df.columns:
            raise PrepError(f"{source.describe()}: no column {source.partition_column!r} to select the partition "
                            f"with (columns: {', '.join(df.columns)}); set --partition-column to one of them, or "
                            "leave it empty and filter with :ds in --query")
        df = df.where(df[source.partition_column] == source.partition_value)
    return df


_ID_TYPES = ("string", "tinyint", "smallint", "int", "bigint")


def _check_frame_columns(where: str, df, wanted: dict[str, str], paths: bool) -> None:
    types = dict(df.dtypes)
    for column, kind in wanted.items():
        if column not in types:
            raise PrepError(f"{where} has no column {column!r} (columns: {', '.join(types)}); name it in the query "
                            f"(`... AS {column}`), or set --id-column, --label-column, --image-column or "
                            "--text-column")
        ok = types[column] in _ID_TYPES if kind == "id" else types[column] == kind
        if not ok:
            expected = "string or an integer type" if kind == "id" else kind
            hint = ""
            if kind == "binary" and types[column] == "string":
                hint = "; if it holds image paths, set --image-root to the folder they are relative to"
            elif kind == "string" and types[column] == "binary" and paths:
                hint = "; it holds bytes: leave --image-root empty to read the images from the table"
            elif kind != "binary":
                hint = f"; cast it in the query (`CAST({column} AS STRING) AS {column}`)"
            raise PrepError(f"{where}: column {column!r} is {types[column]}, expected {expected}{hint}")


def file_size(root: str, rel: str) -> int | None:
    """The size of the file ``rel`` under the folder ``root``; None when there is no such file."""
    if storage.scheme(root) == "hdfs":
        from tasks.io.webhdfs import hdfs_path

        st = storage.webhdfs().status(hdfs_path(root).rstrip("/") + "/" + rel)
        return None if st is None or st["type"] != "FILE" else int(st["length"])
    p = storage.local_path(root) / rel
    return p.stat().st_size if p.is_file() else None


def _relative(path: str) -> bool:
    return bool(path) and not path.startswith("/") and "://" not in path and ".." not in path.split("/")


def _stat_paths(rows, root: str, webhdfs: dict):
    """Executor side of ``list_table`` for path tables: each row with its file's size (None: no file)."""
    storage.use_webhdfs(webhdfs)
    for record_id, label, path in rows:
        path = (path or "").strip()
        yield record_id, label, path, file_size(root, path) if _relative(path) else None



def list_table(spark, source: TableInput, id_column: str = "path", label_column: str = "label",
               input_column: str = "image", column_type: str = "binary", ids_optional: bool = False,
               webhdfs: dict | None = None) -> RawPartition:
    """The rows of a Spark SQL table or query as records (``layout`` ``table``).

    The query runs on the executors; the driver collects each row's id, label, input size and input digest (for
    image paths: the path and its file's size, looked up on the executors). Inputs in the table are read again
    by the executors that check them (``RawPartition.frame``), which find each row's plan by its
    ``(id, label, digest)``; a query whose result changes between the two reads fails the job rather than
    preparing a mix.

    Args:
        spark: the session, whose catalog holds the table.
        source: the table or query and the partition's filter.
        id_column, label_column: the id (string or integer) and label (string) columns.
        input_column: the image bytes (binary), the image path (string, with ``source.image_root``), or the text.
        column_type: ``binary`` (images) or ``string`` (text).
        ids_optional: allow a table without the id column (text: ids are digests of the texts).
        webhdfs: the driver's WebHDFS settings, for the executors that look image paths up on ``hdfs://``.

    Raises:
        PrepError: an unreadable table or query (see ``table_frame``), a missing column or one of another type,
            or a query that fails while it runs.
    """
    from pyspark.errors import PySparkException
    from pyspark.sql import functions as F

    df = table_frame(spark, source)
    where = source.describe()
    paths = bool(source.image_root)
    if paths and column_type != "binary":
        raise PrepError(f"--image-root {source.image_root}: image paths are read for image tables only; a text "
                        "table holds the texts")
    hashed = ids_optional and id_column not in df.columns
    wanted = {label_column: "string", input_column: "string" if paths else column_type}
    if not hashed:
        wanted[id_column] = "id"
    _check_frame_columns(where, df, wanted, paths)
    value = df[input_column]
    data = value if column_type == "binary" else value.cast("binary")
    record_id = (F.concat(F.lit("sha256:"), F.substring(F.sha2(data, 256), 1, 32)) if hashed
                 else df[id_column].cast("string"))
    label = df[label_column]
    try:
        if paths:
            root, settings = source.image_root, dict(webhdfs or {})
            listed = (df.select(record_id.alias("id"), label.alias("label"), value.alias("path")).rdd
                      .mapPartitions(lambda rows: _stat_paths(rows, root, settings)).collect())
            return _path_records(source, listed, id_column)
        frame = df.select(record_id.alias("id"), label.alias("label"), value.alias("input"),
                          F.sha2(data, 256).alias("digest"))
        listed = frame.select("id", "label", F.octet_length("input").alias("size"), "digest").collect()
    except PySparkException as e:
        raise PrepError(f"{where} failed while it was read: {_first_line(e)}") from e
    return _content_records(source, listed, frame, input_column if hashed else id_column, hashed, input_column)


def _path_records(source: TableInput, listed: list[tuple], id_column: str) -> RawPartition:
    """Records of a table of image paths, from each row's id, label, path and file size (None: no file)."""
    records: list[RawRecord] = []
    for record_id, label, path, size in listed:
        label = (label or "").strip()
        if record_id is None or not record_id.strip():
            records.append(RawRecord(path or f"{source.name}#{len(records)}", label,
                                     path if size is not None else "", size or 0,
                                     ("missing_id", f"{source.name} row with image {path!r}: empty "
                                                    f"{id_column!r}")))
        elif not _relative(path):
            records.append(RawRecord(record_id, label, "", 0, (
                "missing_file", f"{source.name} row {record_id!r}: image path {path!r} is not a path relative "
                                f"to --image-root {source.image_root} (empty, absolute, a URL, or with ..)")))
        elif size is None:
            records.append(RawRecord(record_id, label, "", 0, (
                "missing_file", f"{source.name} row {record_id!r} names {path!r}, which is not a file under "
                                f"{source.image_root}")))
        else:
            records.append(RawRecord(record_id, label, path, size))
    mark_duplicates(records)
    return RawPartition("table", records, root=source.image_root)


def _content_records(source: TableInput, listed: list, frame, id_name: str, hashed: bool,
                     input_column: str) -> RawPartition:
    """Records of a table holding its inputs, from each row's id, label, size and digest; the frame and the row
    keys go with them, for the executors that check the rows."""
    records: list[RawRecord] = []
    keys = []
    for record_id, label, size, digest in listed:
        where_row = f"{source.name}#{digest[:16] if digest else 'null'}"
        if hashed and record_id is None:  # a null text: nothing to take an id from, and nothing to learn from
            records.append(RawRecord(where_row, (label or "").strip(), where_row, 0,
                                     ("empty_text", f"{where_row}: null {input_column!r}")))
        else:
            records.append(table_record(where_row, record_id, label, size or 0, id_name))
        keys.append((record_id, label, digest))
    mark_duplicates(records)
    return RawPartition("table", records, frame=frame, row_keys=keys)
