"""Prints where a demo run's model, metrics and logs are, and its test accuracy; fails if any is missing."""

from __future__ import annotations

import argparse
import json
import sys

from tasks.core import run_folder
from tasks.io import storage
from tasks.core.partition import version_of


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--storage-root", required=True)
    p.add_argument("--ds", required=True)
    p.add_argument("--model-name", required=True)
    p.add_argument("--dataset", default="", help="the run's dataset folder under the storage root, if any")
    p.add_argument("--log", required=True)
    p.add_argument("--airflow-logs", required=True)
    p.add_argument("--seconds", type=int, default=0)
    a = p.parse_args(argv)
    data_root = storage.join(a.storage_root, a.dataset) if a.dataset else a.storage_root
    run_dir = storage.local_path(storage.join(data_root, "runs", f"ds={a.ds}"))
    served = storage.local_path(storage.join(a.storage_root, "serving", a.model_name, str(version_of(a.ds))))
    metrics_path = run_dir / run_folder.METRICS
    if not metrics_path.exists():
        print(f"no metrics at {metrics_path}: the run did not evaluate", file=sys.stderr)
        return 1
    metrics = json.loads(metrics_path.read_text())
    print()
    print(f"partition        {a.ds}")
    print(f"test accuracy    {metrics['accuracy']:.4f} on {metrics['num_examples']} examples "
          f"(loss {metrics['loss']:.4f})")
    print(f"trained model    {run_dir / run_folder.MODEL}")
    print(f"metrics          {metrics_path}")
    print(f"history          {run_dir / run_folder.HISTORY}")
    if (served / "saved_model.pb").exists():
        print(f"exported model   {served}  (TF Serving layout, signature serving_default)")
    else:
        print(f"exported model   none: the gate did not bless this model (see {a.log})")
    print(f"run log          {a.log}")
    print(f"task logs        {a.airflow_logs}")
    if a.seconds:
        print(f"DAG run took     {a.seconds}s")
    return 0 if (served / "saved_model.pb").exists() else 1


if __name__ == "__main__":
    sys.exit(main())
