"""What every spark-submit application of the pipeline does first: logging, and writing its resolved config."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging() -> None:
    # stderr is what spark-submit relays to the Airflow task log, line by line.
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr, force=True)


def config_json(cfg) -> str:
    return json.dumps(dataclasses.asdict(cfg), indent=2, sort_keys=True, default=str)


def set_legacy_keras() -> None:
    """hub.KerasLayer is a tf-keras (Keras 2) layer; under Keras 3 ``tf.keras`` would be Keras 3 and reject it.
    Must run before TensorFlow is imported."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
