"""What the pipeline's DAGs (``dags/``) share: their task defaults, their start, their tags, how they wait.

``DEFAULT_ARGS``: every task retries twice with exponential back-off (1 to 15 minutes), logs its failures and
retries with the run's partition (``callbacks.py``), and reaches Spark and HDFS through the pipeline's two
connections (an operator that takes ``conn_id`` or ``webhdfs_conn_id`` gets them). ``PARTITION_WAIT``: how a
sensor waits for a raw partition.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk.configuration import conf

from tfhub_spark.callbacks import log_failure, log_retry

SPARK_CONN_ID = "spark_tfhub"
WEBHDFS_CONN_ID = "webhdfs_tfhub"

DEFAULT_ARGS = {
    "conn_id": SPARK_CONN_ID,
    "webhdfs_conn_id": WEBHDFS_CONN_ID,
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=1),
    "retry_exponential_backoff": True,
    "max_retry_delay": dt.timedelta(minutes=15),
    "on_failure_callback": log_failure,
    "on_retry_callback": log_retry,
}
START_DATE = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
TAGS = ["tfhub", "spark", "ml"]

PARTITION_WAIT = {
    # Waits in the triggerer (Airflow's operators.default_deferrable); otherwise frees its slot between pokes.
    "deferrable": conf.getboolean("operators", "default_deferrable", fallback=True),
    "mode": "reschedule",
    "timeout": 12 * 3600,
}
