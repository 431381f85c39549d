"""What data prep reads, named from its config: the partition (``partition_name``), the raw partition or table
(``list_input``, ``table_input``), the input and id columns, and the URLs beside the output (the label vocabulary,
the quarantine, the previous partition's statistics). Score_partition reads its input through the same functions.
"""

from __future__ import annotations

import datetime as dt
import logging

from tasks.core import run_folder, schema
from tasks.io import storage
from tasks.prep import layouts, modality, table_layout
from tasks.prep.layouts import PrepError

log = logging.getLogger("prepare_examples")

# ``cfg`` below is a data prep config (``tasks.prepare_examples.Config``) or one with the same input fields
# (``tasks.score_partition.Config``).


def _parent(url: str) -> str:
    return url.rstrip("/").rpartition("/")[0]


def id_column(cfg) -> str:
    """The id column: as set, or ``id`` in text tables and ``path`` otherwise."""
    if cfg.id_column:
        return cfg.id_column
    text_table = cfg.task_type == modality.TEXT_CLASSIFICATION and cfg.layout in ("csv", "parquet", "table")
    return "id" if text_table else "path"


def partition_name(cfg) -> str:
    """The partition as the stage's records and folders name it, ``ds=YYYY-MM-DD``, from ``--partition`` (never
    read back from a path)."""
    return f"ds={cfg.partition}"


def table_input(cfg, partition: str) -> table_layout.TableInput:
    """The table layout's input: the table or query, filtered to the partition's date (``ds=`` taken off)."""
    return table_layout.TableInput(table=cfg.table, query=cfg.query, partition_column=cfg.partition_column,
                              partition_value=partition.removeprefix("ds="), image_root=cfg.image_root)


def input_name(cfg) -> str:
    """What the stage reads, for messages and the manifest's ``source``: the raw partition, or the table input."""
    return table_input(cfg, partition_name(cfg)).describe() if cfg.layout == "table" else cfg.raw


def input_column(cfg) -> str:
    return cfg.text_column if cfg.task_type == modality.TEXT_CLASSIFICATION else cfg.image_column


def vocabulary_url(cfg) -> str:
    return cfg.vocabulary or storage.join(_parent(cfg.output), run_folder.VOCABULARY)


def quarantine_url(cfg) -> str:
    if cfg.quarantine:
        return cfg.quarantine
    root = _parent(_parent(cfg.output))
    if not root or root.endswith(":/") or root.endswith(":"):
        raise PrepError(f"--output {cfg.output} has no grandparent folder to put quarantine/ in; set --quarantine")
    return storage.join(root, "quarantine", partition_name(cfg))


def previous_stats_url(cfg) -> tuple[str | None, str]:
    """The previous partition's ``stats.json`` URL (None if unknown) and a name for it in messages."""
    if cfg.previous_stats:
        return cfg.previous_stats, cfg.previous_stats
    previous = f"ds={dt.date.fromisoformat(cfg.partition) - dt.timedelta(days=1)}"
    return storage.join(_parent(cfg.output), previous, run_folder.STATS), previous


def list_input(cfg, spark=None) -> layouts.RawPartition:
    """Lists the stage's input, every record with its label and source, as ``run`` does before checking them.

    Args:
        cfg: the stage's settings.
        spark: the session for the table layout (created when None); the files layouts do not use it.

    Raises:
        PrepError: no ``_SUCCESS`` in the raw partition, an unusable manifest or layout, or no records.
    """
    kind = modality.of(cfg.task_type)
    partition = partition_name(cfg)
    if cfg.layout == "table":
        from pyspark.sql import SparkSession

        # No folder to read, and no _SUCCESS: the rows are the catalog's, and the query selects the partition.
        source = table_input(cfg, partition)
        if not (source.partition_column or ":ds" in source.query):
            log.warning("%s selects no partition (no --partition-column, no :ds in --query): every run reads all "
                        "of its rows", source.describe())
        spark = spark or SparkSession.builder.appName(f"prepare_examples {partition}").getOrCreate()
        raw = table_layout.list_table(spark, source, id_column(cfg), cfg.label_column, input_column(cfg),
                                 kind.arrow_type, ids_optional=kind is modality.TEXT,
                                 webhdfs=storage.webhdfs_settings())
        if not raw.records:
            raise PrepError(f"{source.describe()} gives no rows for partition {partition}: check the table's "
                            "producer, the query, or --partition-column")
    else:
        if not storage.exists(storage.join(cfg.raw, schema.SUCCESS)):
            raise PrepError(f"raw partition {cfg.raw} has no {schema.SUCCESS} marker: the producer has not finished")
        raw = layouts.list_partition(cfg.layout, cfg.raw, cfg.labels_file, id_column(cfg), cfg.label_column,
                                     input_column(cfg), kind.arrow_type, ids_optional=kind is modality.TEXT)
        if not raw.records:
            raise PrepError(f"raw partition {cfg.raw} holds no records in the {cfg.layout} layout (only hidden "
                            "files, or nothing, besides its markers): check the producer, or --layout")
    return raw

