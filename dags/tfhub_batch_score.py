"""Batch scoring: a day's raw partition through the published model, predictions as Parquet.

choose_run -> wait_for_raw_partition -> score_partition -> summarize

Scheduled on the ``tfhub_served_model`` Asset, partition by partition (``PartitionedAssetTimetable``): each
publication of a partition by ``tfhub_finetune`` makes one run with that partition key, which scores that partition
with the version just published, replacing that day's predictions. A manual run scores its partition key (the
trigger form's Partition Key) with the model's highest published version, or the ``version`` param. Predictions
go to ``<data>/predictions/<model>/ds=<partition>/``; records that do not decode to
``<data>/quarantine/predictions/<model>/ds=<partition>/``.

Wiring only: scoring runs on the Spark executors in ``tasks/score_partition.py`` (the model loaded once per Python
worker). Deployment settings come from the ``spark_tfhub`` connection and the ``tfhub_pipeline`` Variable, read
when tasks run.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, PartitionedAssetTimetable, chain, dag, task

from tfhub_spark.assets import SERVED_MODEL
from tfhub_spark.dag_defaults import DEFAULT_ARGS, PARTITION_WAIT, START_DATE, TAGS, WEBHDFS_CONN_ID
from tfhub_spark.operators.spark_job import PipelineSparkSubmitOperator
from tfhub_spark.params import FOLDER_NAME, input_column_params
from tfhub_spark.run_folder import PREDICTIONS_STATS
from tfhub_spark.sensors.partition import PartitionReadySensor



ROOT = "{{ var.json.tfhub_pipeline.storage_root }}"
DATA = ROOT + "{{ '/' ~ params.dataset if params.dataset else '' }}"
CHOSEN = "ti.xcom_pull(task_ids='choose_run')"
DS = "{{ " + CHOSEN + "['partition'] }}"
VERSION = "{{ " + CHOSEN + "['version'] or '' }}"  # empty, so left out: the highest published version
MODEL_NAME = "{{ " + CHOSEN + "['model_name'] }}"
RAW = f"{DATA}/raw/ds={DS}"
PREDICTIONS = f"{DATA}/predictions/{MODEL_NAME}/ds={DS}"

PARAMS = {
    "partition": Param(None, type=["null", "string"], format="date",
                       description="Deprecated for triggered runs, which name their Partition Key (YYYY-MM-DD) "
                                   "instead. For runs without a key (airflow dags test): the date partition to "
                                   "score, YYYY-MM-DD. Empty: the day before the run's data interval end."),
    "version": Param(None, type=["null", "integer"], minimum=1,
                     description="Published version to score with (serving/<model_name>/<version>). Empty: the "
                                 "highest published version, or the one whose publication triggered the run."),
    "dataset": Param(None, type=["null", "string"], pattern=FOLDER_NAME,
                     description="Folder under the storage root holding this dataset's raw/ (and where "
                                 "predictions/ and quarantine/ go). Empty: the storage root itself."),
    "model_name": Param(None, type=["null", "string"], pattern=FOLDER_NAME,
                        description="Model to score with, as published by tfhub_finetune. Empty: the "
                                    "tfhub_pipeline Variable's model_name."),
    "layout": Param("manifest", type="string", enum=["manifest", "folders", "parquet", "csv"],
                    description="How the raw partition is laid out (as for tfhub_finetune). The task type is the "
                                "model's."),
    "labels_file": Param("labels.csv", type="string", minLength=1,
                         description="manifest layout: the labels manifest inside the raw partition (as for "
                                     "tfhub_finetune)."),
    "id_column": Param(None, type=["null", "string"],
                       description="Tables and manifests: column of the record id. Empty: as data prep chooses it."),
    "label_column": Param("label", type="string", minLength=1,
                          description="Tables and manifests: column of the label (kept in the predictions when "
                                      "present; not needed)."),
    **input_column_params(),
    "max_bad_fraction": Param(0.05, type="number", minimum=0, maximum=1,
                              description="Fail when more than this fraction of records cannot be scored (they are "
                                          "quarantined with their reason either way)."),
    "drift_threshold": Param(0.25, type="number", minimum=0, maximum=1,
                             description="Warn when the predicted class distribution is farther than this (total "
                                         "variation) from the label distribution the model was trained on."),
    "batch_size": Param(64, type="integer", minimum=1, maximum=4096, description="Records per model call."),
}


@dag(
    dag_id="tfhub_batch_score",
    # One run per published partition: the run's partition key is the publication event's.
    schedule=PartitionedAssetTimetable(assets=SERVED_MODEL),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=2,
    params=PARAMS,
    default_args=DEFAULT_ARGS,
    tags=TAGS,
    doc_md=__doc__,
)
def tfhub_batch_score():
    @task.short_circuit(task_id="choose_run", execution_timeout=dt.timedelta(minutes=5))
    def choose_run(model_name: str, params=None, dag_run=None, triggering_asset_events=None) -> dict:
        from tfhub_spark.batch_score import choose_run as choose
        from tfhub_spark.partition import run_partition

        if triggering_asset_events:  # a publication: the partition it was trained on, with its version
            return choose(model_name, None, params["version"], None, triggering_asset_events)
        partition = run_partition(dag_run.partition_key, params["partition"], dag_run.data_interval_end)
        return choose(model_name, partition, params["version"], None, {})

    wait_for_raw_partition = PartitionReadySensor(
        task_id="wait_for_raw_partition",
        path=RAW,
        poke_interval=60,
        **PARTITION_WAIT,
    )
    score_partition = PipelineSparkSubmitOperator(
        task_id="score_partition",
        job="score_partition",
        job_args={"--raw": RAW, "--output": PREDICTIONS, "--serving-root": f"{ROOT}/serving",
                  "--model-name": MODEL_NAME, "--version": VERSION, "--partition": DS,
                  "--layout": "{{ params.layout }}", "--max-bad-fraction": "{{ params.max_bad_fraction }}",
                  "--drift-threshold": "{{ params.drift_threshold }}", "--batch-size": "{{ params.batch_size }}",
                  "--labels-file": "{{ params.labels_file }}", "--id-column": "{{ params.id_column or '' }}",
                  "--label-column": "{{ params.label_column }}", "--image-column": "{{ params.image_column }}",
                  "--text-column": "{{ params.text_column }}"},
        # Each Python worker keeps the model it loaded for the next tasks it runs (tasks/serving/scoring.py).
        conf={"spark.python.worker.reuse": "true"},
        execution_timeout=dt.timedelta(hours=2),
    )

    @task(task_id="summarize", execution_timeout=dt.timedelta(minutes=10))
    def summarize(stats_url: str) -> dict:
        from tfhub_spark.batch_score import summarize as read

        return read(stats_url, webhdfs_conn_id=WEBHDFS_CONN_ID)

    chain(choose_run("{{ params.model_name or var.json.tfhub_pipeline.model_name }}"), wait_for_raw_partition,
          score_partition, summarize(f"{PREDICTIONS}/{PREDICTIONS_STATS}"))


tfhub_batch_score()
