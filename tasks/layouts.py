"""The raw partition layouts data prep reads, listed on the driver into records.

Listing is cheap (names, sizes, the labels manifest, Parquet id and label columns): the image bytes are read
later, by the Spark tasks. Problems visible from the listing alone (a file the manifest does not list, a manifest
path with no file, a duplicate id...) are attached to the record here, so that it goes to quarantine with its
reason rather than being dropped.

The ``table`` layout (``list_table``) lists the rows of a Spark SQL table or query instead, with a Spark session:
the query runs on the executors and the driver collects each row's id, label, size and digest.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import posixpath
from collections import defaultdict

from tasks import storage

LAYOUTS = {
    "manifest": "image files anywhere in the partition and a labels manifest, CSV or Parquet (chosen by the file "
                "name's extension), with a path and a label column; paths are relative to the partition",
    "folders": "one folder per class with the images inside, the layout tf.keras.utils.image_dataset_from_directory "
               "reads; the label is the folder's name",
    "parquet": "Parquet files whose rows hold the record id, the label and the input (encoded image bytes, or text)",
    "csv": "CSV files with a header whose rows hold the label and the text, and optionally a record id (text only)",
    "table": "a Spark SQL table of the catalog, or the result of a SQL query, whose rows hold the record id, the "
             "label and the input: encoded image bytes, an image path relative to a root, or text",
}
"""The input layouts, chosen with ``--layout``. In every layout, names starting with ``_`` or ``.`` (``_SUCCESS``,
work folders) are not data, as in Hadoop's input formats."""


class PrepError(RuntimeError):
    """A partition that cannot be prepared, with the file, record or setting to look at."""


@dataclasses.dataclass
class RawRecord:
    """One record as listed, before its bytes are read."""

    id: str
    """Stable id: the path relative to the partition, the table's id column's value, or for a table without one
    ``sha256:<digest of the text>``."""
    label: str
    """Label as given ('' when there is none)."""
    source: str
    """Where its bytes are: a path relative to the partition, ``<parquet file>#<row>``, or '' when there are
    none."""
    size: int
    """Encoded size in bytes (for Parquet, the row group's average), to size shards."""
    problem: tuple[str, str] | None = None
    """``(reason, detail)`` when the listing already shows the record is bad."""


@dataclasses.dataclass(frozen=True)
class ParquetGroup:
    """One Parquet row group: the unit a Spark task reads."""

    file: str
    """Path relative to the partition."""
    index: int
    """Row group number within the file."""
    first: int
    """Index of its first row in ``RawPartition.records``; its rows follow in order."""
    rows: int


@dataclasses.dataclass
class RawPartition:
    layout: str
    records: list[RawRecord]
    parquet_groups: list[ParquetGroup] = dataclasses.field(default_factory=list)
    root: str = ""
    """Where the records' file sources are relative to; empty: the raw partition (the table layout's image paths
    are relative to ``--image-root``)."""
    frame: object = None
    """Table layout with the inputs in the table: the Spark DataFrame of ``(id, label, input, digest)`` rows the
    executors read the inputs from (``prep_tasks.check_table_rows``); None when the records are files."""
    row_keys: list[tuple] = dataclasses.field(default_factory=list)
    """With ``frame``: each record's ``(id, label, digest)`` as its row holds them, in listing order."""

    @property
    def files(self) -> bool:
        """Whether each record is a file that the task writing its shard reads (no shuffle)."""
        return self.layout not in ("parquet", "csv") and self.frame is None


def _check_table_columns(where: str, schema, wanted: dict[str, str]) -> None:
    import pyarrow as pa

    kinds = {"string": (pa.types.is_string, pa.types.is_large_string),
             "binary": (pa.types.is_binary, pa.types.is_large_binary)}
    for column, kind in wanted.items():
        if column not in schema.names:
            raise PrepError(f"{where} has no column {column!r} (columns: {', '.join(schema.names)}); "
                            "set --id-column, --label-column, --image-column or --text-column")
        if not any(test(schema.field(column).type) for test in kinds[kind]):
            raise PrepError(f"{where}: column {column!r} is {schema.field(column).type}, expected {kind}")


def _parquet_file(raw: str, rel: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = storage.open_child(raw, rel)
    try:
        return pq.ParquetFile(f), f
    except (pa.ArrowException, OSError, ValueError) as e:
        f.close()
        raise PrepError(f"{storage.join(raw, rel)} is not a readable Parquet file ({e}); fix or remove it and "
                        "re-run") from e


def read_manifest(raw: str, labels_file: str, id_column: str = "path",
                  label_column: str = "label") -> list[tuple[str, str, str]]:
    """The rows of a labels manifest as ``(where, path, label)``, ``where`` naming the file and line or row.

    Raises:
        PrepError: when the manifest is missing, unreadable, lacks the columns, or lists nothing.
    """
    url = storage.join(raw, labels_file)
    if not storage.exists(url):
        raise PrepError(f"labels manifest {url} is missing (set --labels-file, or --layout for another layout)")
    rows: list[tuple[str, str, str]] = []
    if labels_file.endswith(".parquet"):
        pf, f = _parquet_file(raw, labels_file)
        with f:
            _check_table_columns(url, pf.schema_arrow, {id_column: "string", label_column: "string"})
            table = pf.read(columns=[id_column, label_column])
        for i, (path, label) in enumerate(zip(table.column(id_column).to_pylist(),
                                              table.column(label_column).to_pylist())):
            rows.append((f"{labels_file}#{i}", (path or "").strip(), (label or "").strip()))
    else:
        try:
            text = storage.read_bytes(url).decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise PrepError(f"{url} is not UTF-8 text: {e}") from e
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if reader.fieldnames is None or not {id_column, label_column} <= set(reader.fieldnames):
            raise PrepError(f"{url}: header must name columns {id_column!r} and {label_column!r}, "
                            f"got {reader.fieldnames}")
        for row in reader:
            rows.append((f"{labels_file}:{reader.line_num}", (row[id_column] or "").strip(),
                         (row[label_column] or "").strip()))
    if not rows:
        raise PrepError(f"labels manifest {url} lists no records")
    return rows


def list_manifest(raw: str, labels_file: str, id_column: str = "path", label_column: str = "label") -> RawPartition:
    """Images anywhere in the partition, labelled by a manifest."""
    files = {rel: size for rel, size in storage.walk(raw) if rel != labels_file}
    records: list[RawRecord] = []
    listed: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for where, path, label in read_manifest(raw, labels_file, id_column, label_column):
        if not path:
            records.append(RawRecord(where, label, "", 0, ("missing_id", f"{where}: empty {id_column!r}")))
            continue
        listed[posixpath.normpath(path) if path.startswith("./") else path].append((where, label))
    for path, refs in listed.items():
        present = path in files
        problem = None
        if len(refs) > 1:
            problem = ("duplicate_id", f"listed {len(refs)} times in {labels_file} ("
                       + ", ".join(f"{where} {label!r}" for where, label in refs) + ")")
        elif not present:
            problem = ("missing_file", f"{refs[0][0]} lists {path!r}, which is not in the partition")
        records.append(RawRecord(path, refs[0][1], path if present else "", files.get(path, 0), problem))
    for rel, size in files.items():
        if rel not in listed:
            records.append(RawRecord(rel, "", rel, size, ("unlabelled", f"not listed in {labels_file}")))
    return RawPartition("manifest", records)


def list_folders(raw: str) -> RawPartition:
    """One folder per class: ``<label>/<image>`` (deeper folders belong to the top one, as in Keras)."""
    records = []
    for rel, size in storage.walk(raw):
        if "/" in rel:
            records.append(RawRecord(rel, rel.split("/", 1)[0], rel, size))
        else:
            records.append(RawRecord(rel, "", rel, size, ("unlabelled", "in the partition's top folder, not in "
                                                                        "a class folder")))
    return RawPartition("folders", records)


def content_id(value: bytes | str) -> str:
    """The id of a table row that has no id column: a digest of its input, so the same text always gets the same
    split, and a repeated text is a duplicate."""
    data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    return "sha256:" + hashlib.sha256(data).hexdigest()[:32]


def _mark_duplicates(records: list[RawRecord]) -> None:
    counts: dict[str, int] = defaultdict(int)
    for r in records:
        if r.problem is None:
            counts[r.id] += 1
    for r in records:
        if r.problem is None and counts[r.id] > 1:
            what = "text" if r.id.startswith("sha256:") else f"id {r.id!r}"
            r.problem = ("duplicate_id", f"{what} is on {counts[r.id]} rows; this one is {r.source}")


def _table_record(source: str, record_id: str | None, label: str | None, size: int,
                  id_column: str | None) -> RawRecord:
    label = (label or "").strip()
    if record_id is None or not record_id.strip():
        return RawRecord(source, label, source, size, ("missing_id", f"{source}: empty {id_column!r}"))
    return RawRecord(record_id, label, source, size)


def list_parquet(raw: str, id_column: str = "path", label_column: str = "label", image_column: str = "image",
                 column_type: str = "binary", ids_optional: bool = False) -> RawPartition:
    """Parquet files of ``(id, label, input)`` rows; only the id and label columns are read here, unless the
    table has no id column and ``ids_optional`` allows that (the ids are then digests of the inputs)."""
    records: list[RawRecord] = []
    groups: list[ParquetGroup] = []
    for rel, size in storage.walk(raw):
        if not rel.endswith(".parquet"):
            records.append(RawRecord(rel, "", rel, size, ("unexpected_file", "not a .parquet file in a Parquet "
                                                                             "partition")))
            continue
        pf, f = _parquet_file(raw, rel)
        with f:
            where = storage.join(raw, rel)
            hashed = ids_optional and id_column not in pf.schema_arrow.names
            wanted = {label_column: "string", image_column: column_type}
            if not hashed:
                wanted[id_column] = "string"
            _check_table_columns(where, pf.schema_arrow, wanted)
            row = 0
            for g in range(pf.num_row_groups):
                meta = pf.metadata.row_group(g)
                input_bytes = sum(meta.column(j).total_uncompressed_size for j in range(meta.num_columns)
                                  if meta.column(j).path_in_schema == image_column)
                if hashed:
                    table = pf.read_row_group(g, columns=[image_column, label_column])
                    ids = [None if v is None else content_id(v) for v in table.column(image_column).to_pylist()]
                else:
                    table = pf.read_row_group(g, columns=[id_column, label_column])
                    ids = table.column(id_column).to_pylist()
                labels = table.column(label_column).to_pylist()
                groups.append(ParquetGroup(rel, g, len(records), len(ids)))
                each = input_bytes // max(1, len(ids))
                for record_id, label in zip(ids, labels):
                    records.append(_table_record(f"{rel}#{row}", record_id, label, each,
                                                 image_column if hashed else id_column))
                    row += 1
    _mark_duplicates(records)
    return RawPartition("parquet", records, groups)


def _csv_rows(raw: str, rel: str) -> tuple[str, list[str], list[tuple[str, dict]]]:
    url = storage.join(raw, rel)
    text = storage.read_bytes(url).decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = [(f"{rel}:{reader.line_num}", row) for row in reader]
    return url, list(reader.fieldnames or []), rows


def read_csv_table(raw: str, rel: str, columns: list[str]) -> list[tuple]:
    """The rows of a CSV file with a header, as ``(where, value of each column...)``.

    Bytes that are not UTF-8 are kept as surrogates (``surrogateescape``), so that one bad row is quarantined as
    ``undecodable_text`` rather than failing the file.

    Raises:
        PrepError: the header lacks a column.
    """
    url, fields, rows = _csv_rows(raw, rel)
    if not set(columns) <= set(fields):
        raise PrepError(f"{url}: header must name columns {', '.join(repr(c) for c in columns)}, got {fields} "
                        "(set --id-column, --label-column or --text-column)")
    return [(where, *(row[c] if row[c] is not None else "" for c in columns)) for where, row in rows]


def list_csv(raw: str, id_column: str = "id", label_column: str = "label", text_column: str = "text") -> RawPartition:
    """CSV files of ``(id, label, text)`` rows, the id column optional (then ids are digests of the texts).

    Each file is one unit of the Spark job (a ``ParquetGroup`` with index 0); its rows are records
    ``<file>#<row>``. The driver reads the texts here only to size them (and to digest them without ids);
    the Spark tasks read them again to check them. Prefer Parquet for large partitions.
    """
    records: list[RawRecord] = []
    groups: list[ParquetGroup] = []
    for rel, size in storage.walk(raw):
        if not rel.endswith(".csv"):
            records.append(RawRecord(rel, "", rel, size, ("unexpected_file", "not a .csv file in a CSV partition")))
            continue
        url, fields, rows = _csv_rows(raw, rel)
        if not {label_column, text_column} <= set(fields):
            raise PrepError(f"{url}: header must name columns {label_column!r} and {text_column!r} (and optionally "
                            f"{id_column!r}), got {fields} (set --id-column, --label-column or --text-column)")
        has_ids = id_column in fields
        groups.append(ParquetGroup(rel, 0, len(records), len(rows)))
        for i, (_, row) in enumerate(rows):
            label, text = row[label_column], row[text_column] or ""
            nbytes = len(text.encode("utf-8", "surrogateescape"))
            if not has_ids and not text.strip():  # nothing to take an id from, and nothing to learn from
                records.append(RawRecord(f"{rel}#{i}", (label or "").strip(), f"{rel}#{i}", nbytes,
                                         ("empty_text", f"{rel}#{i}: blank {text_column!r}")))
                continue
            record_id = row[id_column] if has_ids else content_id(text)
            records.append(_table_record(f"{rel}#{i}", record_id, label, nbytes, id_column))
    _mark_duplicates(records)
    return RawPartition("csv", records, groups)


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
        from tasks.webhdfs import hdfs_path

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
    records: list[RawRecord] = []
    try:
        if paths:
            root, settings = source.image_root, dict(webhdfs or {})
            listed = (df.select(record_id.alias("id"), label.alias("label"), value.alias("path")).rdd
                      .mapPartitions(lambda rows: _stat_paths(rows, root, settings)).collect())
        else:
            frame = df.select(record_id.alias("id"), label.alias("label"), value.alias("input"),
                              F.sha2(data, 256).alias("digest"))
            listed = frame.select("id", "label", F.octet_length("input").alias("size"), "digest").collect()
    except PySparkException as e:
        raise PrepError(f"{where} failed while it was read: {_first_line(e)}") from e
    if paths:
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
        _mark_duplicates(records)
        return RawPartition("table", records, root=source.image_root)
    keys = []
    for record_id, label, size, digest in listed:
        where_row = f"{source.name}#{digest[:16] if digest else 'null'}"
        if hashed and record_id is None:  # a null text: nothing to take an id from, and nothing to learn from
            records.append(RawRecord(where_row, (label or "").strip(), where_row, 0,
                                     ("empty_text", f"{where_row}: null {input_column!r}")))
        else:
            records.append(_table_record(where_row, record_id, label, size or 0,
                                         input_column if hashed else id_column))
        keys.append((record_id, label, digest))
    _mark_duplicates(records)
    return RawPartition("table", records, frame=frame, row_keys=keys)


def list_partition(layout: str, raw: str, labels_file: str, id_column: str, label_column: str,
                   image_column: str, column_type: str = "binary", ids_optional: bool = False) -> RawPartition:
    """The records of a raw partition in the given layout; ``image_column`` is the input's column in table
    layouts (of Arrow type ``column_type``), and ``ids_optional`` lets tables have no id column."""
    if layout == "manifest":
        return list_manifest(raw, labels_file, id_column, label_column)
    if layout == "folders":
        return list_folders(raw)
    if layout == "parquet":
        return list_parquet(raw, id_column, label_column, image_column, column_type, ids_optional)
    if layout == "csv":
        return list_csv(raw, id_column, label_column, image_column)
    if layout == "table":
        raise PrepError("the table layout is read from a Spark SQL table or query (list_table), not from a folder")
    raise PrepError(f"unknown layout {layout!r}; use one of {sorted(LAYOUTS)}")
