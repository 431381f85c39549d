"""One day of data to a served model: fine-tune a TF Hub module on Spark and publish it for TF Serving.

wait_for_raw_partition -> prepare_examples -> finetune -> evaluate -> gate -> approve -> export_model

Wiring only: Spark and TensorFlow run in the spark-submit applications under ``tasks/``. The deployment (storage
root, Spark master, Spark conf) comes from the ``spark_tfhub`` connection and the ``tfhub_pipeline`` Variable,
read when tasks run, so the same file runs on the embedded default and on a cluster.
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import CronPartitionTimetable, Param, chain, dag, task

from tfhub_spark.assets import SERVED_MODEL
from tfhub_spark.dag_defaults import DEFAULT_ARGS, PARTITION_WAIT, START_DATE, TAGS, WEBHDFS_CONN_ID
from tfhub_spark.operators.approval import APPROVAL_MODES, ModelApprovalOperator
from tfhub_spark.operators.spark_job import ModelExportOperator, PipelineSparkSubmitOperator, TfHubFinetuneOperator
from tfhub_spark.partition import KEY_FORMAT, MACROS
from tfhub_spark.params import FOLDER_NAME, input_column_params
from tfhub_spark.run_folder import BLESSING
from tfhub_spark.sensors.partition import PartitionReadySensor

# Deployment settings that shape the DAG itself come from the environment (like Airflow's own configuration),
# never from Variables, which are not read at parse time.
SCHEDULE = os.environ.get("TFHUB_FINETUNE_SCHEDULE", "0 0 * * *")
# Seconds between the sensor's checks of a partition that is not complete yet.
PARTITION_POKE_INTERVAL = int(os.environ.get("TFHUB_PARTITION_POKE_INTERVAL", "60"))

TRAINING_POOL = "tfhub_training"

ROOT = "{{ var.json.tfhub_pipeline.storage_root }}"
# A run's data lives under the storage root, or under <root>/<dataset> when the run names a dataset.
DATA = ROOT + "{{ '/' ~ params.dataset if params.dataset else '' }}"
MODEL_NAME = "{{ params.model_name or var.json.tfhub_pipeline.model_name }}"
# The demo hub module of each task type, under the storage root (made by `make hub-module`).
DEFAULT_HUB_MODULES = {"image_classification": "hub/shapes_fv_32", "text_classification": "hub/text_embed_64"}
HUB_MODULE = "{{ params.hub_module or default_hub_module(params.task_type) }}"
# The run's partition key (tfhub_spark/partition.py: the param, then the data interval, for runs without one).
_DS = "tfhub_partition(dag_run.partition_key, params.partition, dag_run.data_interval_end)"
DS = "{{ " + _DS + " }}"
VERSION = "{{ tfhub_version(" + _DS + ") }}"
RAW = f"{DATA}/raw/ds={DS}"
EXAMPLES = f"{DATA}/examples/ds={DS}"
RUN_DIR = f"{DATA}/runs/ds={DS}"
# layout table: image paths are relative to image_root, a URL or a folder under the dataset's.
IMAGE_ROOT = ("{% if params.image_root and '://' not in params.image_root %}" + DATA
              + "/{{ params.image_root }}{% else %}{{ params.image_root or '' }}{% endif %}")


PARAMS = {
    "partition": Param(None, type=["null", "string"], format="date",
                       description="Deprecated for triggered runs, which name their Partition Key (YYYY-MM-DD) "
                                   "instead. For runs without a key (airflow dags test): the date partition to "
                                   "process, YYYY-MM-DD. Empty: the day before the run's data interval end."),
    "task_type": Param("image_classification", type="string",
                       enum=["image_classification", "text_classification"],
                       description="What the records are. Every stage is shared; the dataset records it, so "
                                   "training, evaluation and export follow it."),
    "dataset": Param(None, type=["null", "string"], pattern=FOLDER_NAME,
                     description="Folder under the storage root holding this dataset's raw/, examples/, runs/ "
                                 "and quarantine/ (letters, digits, _ . -, not starting with a dot). Empty: the "
                                 "storage root itself."),
    "model_name": Param(None, type=["null", "string"], pattern=FOLDER_NAME,
                        description="Name the model is published under (serving/<model_name>/<version>; letters, "
                                    "digits, _ . -, not starting with a dot). Empty: the tfhub_pipeline Variable's "
                                    "model_name."),
    "layout": Param("manifest", type="string", enum=["manifest", "folders", "parquet", "csv", "table"],
                    description="How the raw partition is laid out: files plus a labels manifest (labels.csv or "
                                ".parquet), one folder per class, Parquet rows with the image bytes or the text, "
                                "or (text only) CSV files with text and label columns; or table: rows of a Spark "
                                "SQL table or query (table, query), read from the catalog, with no raw folder."),
    "table": Param(None, type=["null", "string"],
                   description="layout table: a table of the Spark catalog, [database.]name, whose rows hold the "
                               "id, label and input columns (id_column, label_column, image_column or "
                               "text_column). Set table or query."),
    "query": Param(None, type=["null", "string"],
                   description="layout table: a Spark SQL query giving the rows; filters and joins are yours, e.g. "
                               "SELECT i.path, l.label, i.image FROM images i JOIN labels l ON l.path = i.path "
                               "WHERE i.ds = :ds. :ds is the run's partition date (YYYY-MM-DD), bound as a "
                               "parameter."),
    "partition_column": Param(None, type=["null", "string"],
                              description="layout table: keep only the rows whose column equals the partition "
                                          "date (YYYY-MM-DD). Empty: every row of the table, or what the query "
                                          "selects with :ds."),
    "image_root": Param(None, type=["null", "string"],
                        description="layout table, images: the image column holds paths relative to this folder "
                                    "(a storage URL, or a path under the dataset's folder). Empty: the image column "
                                    "holds the encoded image bytes."),
    "labels_file": Param("labels.csv", type="string", minLength=1,
                         description="manifest layout: the labels manifest inside the raw partition (CSV, or "
                                     "Parquet when it ends in .parquet)."),
    "id_column": Param(None, type=["null", "string"],
                       description="Tables and manifests: column of the record id. Empty: path (manifests and "
                                   "image tables), or id in text tables, where it is optional (without it a "
                                   "record's id is a digest of its text)."),
    "label_column": Param("label", type="string", minLength=1,
                          description="Tables and manifests: column of the label."),
    **input_column_params(),
    "labels": Param(None, type=["null", "string"],
                    description="The declared labels, comma-separated; records with any other label are bad "
                                "(unknown_label). Empty: any label."),
    "split_fractions": Param("0.7,0.1,0.2", type="string", pattern=r"^[0-9.]+,[0-9.]+,[0-9.]+$",
                             description="Fractions of train, eval and test (by hash of the record id), "
                                         "comma-separated, summing to 1."),
    "min_image_side": Param(8, type="integer", minimum=1,
                            description="Images with a side shorter than this (pixels) are bad."),
    "max_image_side": Param(16384, type="integer", minimum=1,
                            description="Images with a side longer than this (pixels) are bad, and are not decoded."),
    "max_image_mb": Param(64, type="number", exclusiveMinimum=0,
                          description="Image records larger than this (MiB) are bad, and are not read."),
    "min_text_chars": Param(1, type="integer", minimum=0,
                            description="Texts shorter than this after stripping white space are bad (empty_text)."),
    "max_text_chars": Param(20000, type="integer", minimum=0,
                            description="Texts longer than this are bad (text_too_long)."),
    "max_text_mb": Param(1, type="number", exclusiveMinimum=0,
                         description="Text records larger than this (MiB) are bad, and are not read."),
    "max_bad_fraction": Param(0.05, type="number", minimum=0, maximum=1,
                              description="Fail the prep when more than this fraction of records is bad (bad "
                                          "records always go to quarantine/ds=.../ with their reason)."),
    "new_label_policy": Param("fail", type="string", enum=["fail", "append", "quarantine"],
                              description="A label not in the persisted vocabulary: fail the run, append it with a "
                                          "new id, or quarantine its records."),
    "target_shard_mb": Param(64, type="integer", minimum=1, maximum=4096,
                             description="Target TFRecord shard size; there are always at least 2 shards per "
                                         "worker."),
    "drift_threshold": Param(0.2, type="number", minimum=0, maximum=1,
                             description="Warn when the label distribution is farther than this (total variation) "
                                         "from the previous partition's."),
    "hub_module": Param(None, type=["null", "string"],
                        description="TF Hub module: tfhub.dev/Kaggle URL or handle, absolute path, or a path "
                                    "under the storage root. Empty: the demo module of the task type "
                                    f"({', '.join(DEFAULT_HUB_MODULES.values())})."),
    "epochs": Param(15, type="integer", minimum=1, maximum=200, description="Training epochs."),
    "batch_size": Param(32, type="integer", minimum=2, maximum=4096,
                        description="Global batch size; a multiple of num_workers."),
    "learning_rate": Param(0.002, type="number", exclusiveMinimum=0, maximum=1, description="Adam learning rate."),
    "num_workers": Param(2, type="integer", minimum=1, maximum=64,
                         description="TensorFlow workers, one Spark barrier task each."),
    "image_size": Param(None, type=["null", "integer"], minimum=1, maximum=4096,
                        description="Input height and width (pixels) of an image module whose signature leaves its "
                                    "size open. Empty: what the module records or its signature fixes."),
    "fine_tune": Param(True, type="boolean",
                       description="Also train the hub module's weights (otherwise only the classification head)."),
    "module_lr_scale": Param(1.0, type="number", exclusiveMinimum=0, maximum=10,
                             description="With fine_tune, the hub module's learning rate as a multiple of "
                                         "learning_rate."),
    "max_restarts": Param(2, type="integer", minimum=0, maximum=10,
                          description="Relaunches of the training stage after a lost worker, each resuming from "
                                      "the last checkpoint."),
    "min_accuracy": Param(0.9, type="number", minimum=0, maximum=1,
                          description="Least test accuracy for the model to be blessed and exported."),
    "min_class_recall": Param(0.0, type="number", minimum=0, maximum=1,
                              description="Least recall of every class to bless; 0 turns the check off."),
    "baseline_tolerance": Param(0.01, type="number", minimum=0, maximum=1,
                                description="How far below the published model's accuracy (re-scored on the same "
                                            "test split) the candidate may be and still be blessed."),
    "approval": Param("none", type="string", enum=list(APPROVAL_MODES),
                      description="required: a blessed model waits for a reviewer to approve it (Airflow UI, "
                                  "Required Actions, or the REST API) before it is published; rejected or not "
                                  "answered within approval_timeout, nothing is published and the run succeeds. "
                                  "none: published as soon as it is blessed."),
    "approval_timeout": Param(1440, type="number", exclusiveMinimum=0, maximum=43200,
                              description="approval required: minutes to wait for the reviewer's answer."),
}


# The fine-tuning operator's options, each the Param of its name (image_size left out when empty).
TUNING = {**{name: "{{ params." + name + " }}" for name in ("num_workers", "epochs", "batch_size", "learning_rate",
                                                             "fine_tune", "module_lr_scale", "max_restarts")},
          "image_size": "{{ params.image_size or '' }}"}
# A table has no raw folder: its readiness is the catalog's, and prep fails on a partition with no rows.
NO_RAW_FOLDER = "{{ 'layout table reads a Spark SQL table, not a raw folder' if params.layout == 'table' else '' }}"
# The prep and evaluation jobs' options: the run's paths, and the Params of the options' names.
PREP_ARGS = {"--raw": RAW, "--output": EXAMPLES, "--partition": DS, "--min-shards": "{{ params.num_workers * 2 }}",
             "--task-type": "{{ params.task_type }}", "--layout": "{{ params.layout }}",
             "--max-bad-fraction": "{{ params.max_bad_fraction }}",
             "--new-label-policy": "{{ params.new_label_policy }}",
             "--target-shard-mb": "{{ params.target_shard_mb }}",
             "--table": "{{ params.table or '' }}", "--query": "{{ params.query or '' }}",
             "--partition-column": "{{ params.partition_column or '' }}", "--image-root": IMAGE_ROOT,
             "--labels-file": "{{ params.labels_file }}", "--id-column": "{{ params.id_column or '' }}",
             "--label-column": "{{ params.label_column }}", "--image-column": "{{ params.image_column }}",
             "--text-column": "{{ params.text_column }}", "--labels": "{{ params.labels or '' }}",
             "--split-fractions": "{{ params.split_fractions }}",
             "--min-image-side": "{{ params.min_image_side }}", "--max-image-side": "{{ params.max_image_side }}",
             "--max-image-mb": "{{ params.max_image_mb }}", "--min-text-chars": "{{ params.min_text_chars }}",
             "--max-text-chars": "{{ params.max_text_chars }}", "--max-text-mb": "{{ params.max_text_mb }}",
             "--drift-threshold": "{{ params.drift_threshold }}"}
EVALUATE_ARGS = {"--examples": EXAMPLES, "--run-dir": RUN_DIR, "--serving-root": f"{ROOT}/serving",
                 "--model-name": MODEL_NAME, "--min-accuracy": "{{ params.min_accuracy }}",
                 "--min-class-recall": "{{ params.min_class_recall }}",
                 "--baseline-tolerance": "{{ params.baseline_tolerance }}"}


@dag(
    dag_id="tfhub_finetune",
    # A run processes one date partition, its partition_key: the daily run after midnight processes the day that
    # just ended (run_offset -1); backfills and clears select runs by partition date and key.
    schedule=CronPartitionTimetable(SCHEDULE, timezone="UTC", run_offset=-1, key_format=KEY_FORMAT),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=2,
    params=PARAMS,
    user_defined_macros={**MACROS, "default_hub_module": DEFAULT_HUB_MODULES.get},
    default_args=DEFAULT_ARGS,
    tags=TAGS,
    doc_md=__doc__,
)
def tfhub_finetune():
    wait_for_raw_partition = PartitionReadySensor(
        task_id="wait_for_raw_partition",
        path=RAW,
        no_wait_reason=NO_RAW_FOLDER,
        poke_interval=PARTITION_POKE_INTERVAL,
        **PARTITION_WAIT,
    )
    prepare_examples = PipelineSparkSubmitOperator(
        task_id="prepare_examples",
        job="prepare_examples",
        job_args=PREP_ARGS,
        execution_timeout=dt.timedelta(hours=2),
    )
    finetune = TfHubFinetuneOperator(
        task_id="finetune",
        pool=TRAINING_POOL,
        examples=EXAMPLES,
        run_dir=RUN_DIR,
        storage_root=ROOT,
        hub_module=HUB_MODULE,
        **TUNING,
        # Restarts happen inside the task (the barrier stage is relaunched from a checkpoint), so this bounds
        # all attempts together.
        execution_timeout=dt.timedelta(hours=6),
    )
    evaluate = PipelineSparkSubmitOperator(
        task_id="evaluate",
        job="evaluate",
        job_args=EVALUATE_ARGS,
        execution_timeout=dt.timedelta(hours=1),
    )

    @task.short_circuit(task_id="gate", execution_timeout=dt.timedelta(minutes=10))
    def gate(blessing_url: str) -> bool:
        from tfhub_spark.gate import is_blessed

        return is_blessed(blessing_url, webhdfs_conn_id=WEBHDFS_CONN_ID)

    approve = ModelApprovalOperator(
        task_id="approve",
        run_dir=RUN_DIR,
        approval="{{ params.approval }}",
        approval_timeout="{{ params.approval_timeout }}",
        model_name=MODEL_NAME,
        version=VERSION,
    )

    export_model = ModelExportOperator(
        task_id="export_model",
        run_dir=RUN_DIR,
        examples=EXAMPLES,
        serving_root=f"{ROOT}/serving",
        model_name=MODEL_NAME,
        version=VERSION,
        partition=DS,
        outlets=[SERVED_MODEL],
        execution_timeout=dt.timedelta(hours=1),
    )

    chain(wait_for_raw_partition, prepare_examples, finetune, evaluate, gate(f"{RUN_DIR}/{BLESSING}"),
          approve, export_model)


tfhub_finetune()
