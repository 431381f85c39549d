"""The raw partition layouts data prep reads, listed on the driver into records.

Listing is cheap (names, sizes, the labels manifest, Parquet id and label columns): the image bytes are read
later, by the Spark tasks. Problems visible from the listing alone (a file the manifest does not list, a manifest
path with no file, a duplicate id...) are attached to the record here, so that it goes to quarantine with its
reason rather than being dropped.

The ``table`` layout lists the rows of a Spark SQL table or query instead, with a Spark session
(``tasks.prep.table_layout``).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import posixpath
from collections import defaultdict

from tasks.io import storage

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


def mark_duplicates(records: list[RawRecord]) -> None:
    counts: dict[str, int] = defaultdict(int)
    for r in records:
        if r.problem is None:
            counts[r.id] += 1
    for r in records:
        if r.problem is None and counts[r.id] > 1:
            what = "text" if r.id.startswith("sha256:") else f"id {r.id!r}"
            r.problem = ("duplicate_id", f"{what} is on {counts[r.id]} rows; this one is {r.source}")


def table_record(source: str, record_id: str | None, label: str | None, size: int,
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
                    records.append(table_record(f"{rel}#{row}", record_id, label, each,
                                                 image_column if hashed else id_column))
                    row += 1
    mark_duplicates(records)
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
            records.append(table_record(f"{rel}#{i}", record_id, label, nbytes, id_column))
    mark_duplicates(records)
    return RawPartition("csv", records, groups)


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
