"""The raw partition layouts data prep reads, listed on the driver into records.

Listing is cheap (names, sizes, the labels manifest, Parquet id and label columns): the image bytes are read
later, by the Spark tasks. Problems visible from the listing alone (a file the manifest does not list, a manifest
path with no file, a duplicate id...) are attached to the record here, so that it goes to quarantine with its
reason rather than being dropped.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import posixpath
from collections import defaultdict

from tasks import storage

LAYOUTS = {
    "manifest": "image files anywhere in the partition and a labels manifest, CSV or Parquet (chosen by the file "
                "name's extension), with a path and a label column; paths are relative to the partition",
    "folders": "one folder per class with the images inside, the layout tf.keras.utils.image_dataset_from_directory "
               "reads; the label is the folder's name",
    "parquet": "Parquet files whose rows hold the record id, the label and the encoded image bytes",
}
"""The input layouts, chosen with ``--layout``. In every layout, names starting with ``_`` or ``.`` (``_SUCCESS``,
work folders) are not data, as in Hadoop's input formats."""


class PrepError(RuntimeError):
    """A partition that cannot be prepared, with the file, record or setting to look at."""


@dataclasses.dataclass
class RawRecord:
    """One record as listed, before its bytes are read."""

    id: str
    """Stable id: the path relative to the partition, or the Parquet id column's value."""
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


def _check_table_columns(where: str, schema, wanted: dict[str, str]) -> None:
    import pyarrow as pa

    kinds = {"string": (pa.types.is_string, pa.types.is_large_string),
             "binary": (pa.types.is_binary, pa.types.is_large_binary)}
    for column, kind in wanted.items():
        if column not in schema.names:
            raise PrepError(f"{where} has no column {column!r} (columns: {', '.join(schema.names)}); "
                            "set --id-column, --label-column or --image-column")
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


def list_parquet(raw: str, id_column: str = "path", label_column: str = "label",
                 image_column: str = "image") -> RawPartition:
    """Parquet files of ``(id, label, image bytes)`` rows; only the id and label columns are read here."""
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
            _check_table_columns(where, pf.schema_arrow, {id_column: "string", label_column: "string",
                                                          image_column: "binary"})
            row = 0
            for g in range(pf.num_row_groups):
                meta = pf.metadata.row_group(g)
                image_bytes = sum(meta.column(j).total_uncompressed_size for j in range(meta.num_columns)
                                  if meta.column(j).path_in_schema == image_column)
                table = pf.read_row_group(g, columns=[id_column, label_column])
                ids, labels = table.column(id_column).to_pylist(), table.column(label_column).to_pylist()
                groups.append(ParquetGroup(rel, g, len(records), len(ids)))
                each = image_bytes // max(1, len(ids))
                for record_id, label in zip(ids, labels):
                    source = f"{rel}#{row}"
                    label = (label or "").strip()
                    if record_id is None or not record_id.strip():
                        records.append(RawRecord(source, label, source, each,
                                                 ("missing_id", f"{source}: empty {id_column!r}")))
                    else:
                        records.append(RawRecord(record_id, label, source, each))
                    row += 1
    counts: dict[str, int] = defaultdict(int)
    for r in records:
        if r.problem is None:
            counts[r.id] += 1
    for r in records:
        if r.problem is None and counts[r.id] > 1:
            r.problem = ("duplicate_id", f"id {r.id!r} is on {counts[r.id]} rows; this one is {r.source}")
    return RawPartition("parquet", records, groups)


def list_partition(layout: str, raw: str, labels_file: str, id_column: str, label_column: str,
                   image_column: str) -> RawPartition:
    """The records of a raw partition in the given layout."""
    if layout == "manifest":
        return list_manifest(raw, labels_file, id_column, label_column)
    if layout == "folders":
        return list_folders(raw)
    if layout == "parquet":
        return list_parquet(raw, id_column, label_column, image_column)
    raise PrepError(f"unknown layout {layout!r}; use one of {sorted(LAYOUTS)}")
