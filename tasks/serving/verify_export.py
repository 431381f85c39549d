"""Checks a published model the way TF Serving will use it, in a process of its own.

Loads the SavedModel with plain TensorFlow (no tf-keras, no TF Hub), replays its warm-up requests through the
signatures they name, and compares the Predict probabilities with the evaluated model's (``--expected``, written
by the export stage) and the Classify scores with the Predict probabilities. Exits non-zero, saying what
disagreed, otherwise.

Usage::

    python -m tasks.serving.verify_export --model-dir /serving/shapes/20261120 --expected /runs/ds=.../export_check.json
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from tasks.core import run_folder
from tasks.prep import tfrecord


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--expected", required=True)
    p.add_argument("--atol", type=float, default=1e-4)
    a = p.parse_args(argv)

    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    expected = json.loads(open(a.expected).read())
    want = np.array(expected["expected"])
    model = tf.saved_model.load(a.model_dir)
    with open(f"{a.model_dir}/{run_folder.WARMUP_FILE}", "rb") as f:
        logs = [prediction_log_pb2.PredictionLog.FromString(r) for r in tfrecord.read_records(f)]
    if not logs:
        print("verify_export: no warm-up requests", file=sys.stderr)
        return 1
    singles, failures = 0, []
    for i, entry in enumerate(logs):
        kind = entry.WhichOneof("log_type")
        if kind == "predict_log":
            req = entry.predict_log.request
            inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in req.inputs.items()}
            out = model.signatures[req.model_spec.signature_name or "serving_default"](**inputs)
            got = out["probabilities"].numpy()
            # The export writes one single-input request per warm-up input, then the batch of all of them: with
            # one input the batch has one row too, and is compared with the whole of `want` like any batch.
            if len(got) == 1 and singles < len(want):
                ref = want[singles:singles + 1]
                singles += 1
            else:
                ref = want
        elif kind == "classify_log":
            req = entry.classify_log.request
            serialized = [ex.SerializeToString() for ex in req.input.example_list.examples]
            out = model.signatures[req.model_spec.signature_name](inputs=tf.constant(serialized))
            got, ref = out["scores"].numpy(), want
            names = [[n.decode() for n in row] for row in out["classes"].numpy()]
            if any(row != expected["labels"] for row in names):
                failures.append(f"request {i}: classify classes {names[0]} != labels {expected['labels']}")
        else:
            failures.append(f"request {i}: unexpected log type {kind}")
            continue
        diff = float(np.abs(got - ref).max()) if got.shape == ref.shape else float("inf")
        if diff > a.atol:
            failures.append(f"request {i} ({kind}): max difference {diff:.2e} from the evaluated model, shape "
                            f"{got.shape} vs {ref.shape}")
    if failures:
        print("verify_export: FAILED\n" + "\n".join(failures), file=sys.stderr)
        return 1
    print(f"verify_export: {len(logs)} warm-up requests replayed on {a.model_dir}; predictions match the "
          f"evaluated model within {a.atol}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
