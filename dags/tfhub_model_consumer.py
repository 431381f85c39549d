"""Example consumer: runs whenever tfhub_finetune publishes a model, and reports what was published.

Scheduled partition by partition (``PartitionedAssetTimetable``): tfhub_finetune's events carry the partition key,
and Airflow queues a plain asset schedule only for events without one. Each run's ``partition_key`` is the date
whose model was published.

A real consumer would reload a TF Serving fleet, run a shadow evaluation or announce the model. This one logs
the published model's path, version and accuracy from the asset event that triggered it.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import PartitionedAssetTimetable, dag, task

from tfhub_spark.assets import SERVED_MODEL


@dag(
    dag_id="tfhub_model_consumer",
    schedule=PartitionedAssetTimetable(assets=SERVED_MODEL),
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    tags=["tfhub", "example"],
    doc_md=__doc__,
)
def tfhub_model_consumer():
    @task
    def announce(triggering_asset_events=None) -> list[dict]:
        published = []
        for asset, events in (triggering_asset_events or {}).items():
            for event in events:
                extra = dict(event.extra or {})
                print(f"new model from {asset}: {extra.get('model_name')} version {extra.get('version')} at "
                      f"{extra.get('path')} (accuracy {extra.get('accuracy')})")
                published.append(extra)
        return published

    announce()


tfhub_model_consumer()
