"""The parts of distributed fine-tuning that make it start fast, never hang and say what it does, tested alone:
pre-flight checks, the worker-to-driver log relay and its watchdog, hub module resolution on shared storage,
checkpoint copies on hdfs://, the module's own learning rate, TensorBoard events; and, on local Spark, a failing
worker whose traceback reaches the driver's log while the driver relaunches the stage."""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import logging
import os
import shutil
import socket
import tarfile
import threading
import time
from pathlib import Path

import pytest

from tasks import finetune as F
from tasks.io import storage
from tasks.training import checkpoints, driver, hub_module, logrelay, preflight, worker

# -- pre-flight -------------------------------------------------------------------------------------------------


def test_skewed_files_are_split_so_every_worker_gets_a_file():
    files = [{"name": "train-0", "records": 900}, {"name": "train-1", "records": 100}]
    assert preflight.assign_files(files, 2) == [["train-0"], ["train-1"]]
    with pytest.raises(preflight.FinetuneError, match="3 workers but only 2 non-empty training files"):
        preflight.assign_files(files, 3)


def test_missing_training_files_are_named(tmp_path):
    manifest = {"counts": {"train": 3}, "files": {"train": [{"name": "train-0", "records": 2, "bytes": 20},
                                                            {"name": "train-1", "records": 1, "bytes": 10}],
                                                  "eval": [{"name": "eval-0", "records": 1, "bytes": 10},
                                                           {"name": "eval-1", "records": 0, "bytes": 0}]}}
    (tmp_path / "train-0").write_bytes(b"")
    with pytest.raises(preflight.FinetuneError, match=r"2 files listed in manifest.json are missing \(first: "
                                              r"\['train-1', 'eval-0'\]\)"):
        preflight.check_training_data(f"file://{tmp_path}", manifest)
    (tmp_path / "train-1").write_bytes(b"")
    (tmp_path / "eval-0").write_bytes(b"")
    preflight.check_training_data(f"file://{tmp_path}", manifest)  # an empty file may be absent: eval-1
    del manifest["files"]["train"][1]["bytes"]  # the workers choose stream or prefetch by the sizes
    with pytest.raises(preflight.FinetuneError, match=r"gives no size \(bytes\) for 1 files \(first: \['train-1'\]\)"):
        preflight.check_training_data(f"file://{tmp_path}", manifest)


def test_spark_settings_that_break_a_barrier_stage_are_refused(caplog):
    good = {"spark.dynamicAllocation.enabled": "false", "spark.python.worker.reuse": "false",
            "spark.barrier.sync.timeout": "15min"}
    with caplog.at_level(logging.INFO, logger="finetune"):
        preflight.check_spark_conf(good)
    assert "barrier syncs time out after 900s" in caplog.text
    with pytest.raises(preflight.FinetuneError, match="set spark.dynamicAllocation.enabled=false"):
        preflight.check_spark_conf({**good, "spark.dynamicAllocation.enabled": "true"})
    with pytest.raises(preflight.FinetuneError, match="set spark.python.worker.reuse=false"):
        preflight.check_spark_conf({k: v for k, v in good.items() if k != "spark.python.worker.reuse"})
    caplog.clear()
    preflight.check_spark_conf({k: v for k, v in good.items() if k != "spark.barrier.sync.timeout"})
    assert "spark.barrier.sync.timeout is not set" in caplog.text


def test_too_few_slots_fail_at_once_naming_wanted_and_available(spark):
    assert preflight.task_slots(spark.sparkContext) == 2
    t0 = time.monotonic()
    with pytest.raises(preflight.FinetuneError, match=r"num_workers=3 barrier tasks wanted but 2 task slots available "
                                              r"\(the settings allow at most 2; master local\[2\]"):
        preflight.wait_for_slots(spark.sparkContext, 3, wait_s=60)
    assert time.monotonic() - t0 < 5
    assert preflight.wait_for_slots(spark.sparkContext, 2, wait_s=0) == 2


@pytest.mark.parametrize("master,conf,slots", [
    ("local[4]", {}, 4), ("local[4]", {"spark.task.cpus": "2"}, 2), ("local", {}, 1),
    ("local-cluster[2,3,1024]", {}, 6),
    ("yarn", {"spark.executor.instances": "3", "spark.executor.cores": "2"}, 6),
    ("spark://m:7077", {"spark.cores.max": "2"}, 2),
    ("spark://m:7077", {}, None),  # executors may keep registering: wait for them
])
def test_configured_slots(master, conf, slots):
    assert preflight.configured_slots(master, conf) == slots


def test_new_options_are_validated():
    base = ["--examples", "file:///e", "--run-dir", "file:///r", "--storage-root", "file:///s", "--hub-module", "h"]
    cfg = F.parse_args(base + ["--max-restarts", "0", "--checkpoint-every-steps", "7", "--module-lr-scale", "0.1",
                               "--stall-timeout-s", "60"])
    assert (cfg.max_restarts, cfg.checkpoint_every_steps, cfg.module_lr_scale, cfg.stall_timeout_s) == (0, 7, 0.1, 60)
    for bad in (["--max-restarts", "-1"], ["--checkpoint-every-steps", "0"], ["--module-lr-scale", "-0.5"],
                ["--stall-timeout-s", "1"]):
        with pytest.raises(SystemExit):
            F.parse_args(base + bad)


def test_each_worker_sees_only_the_gpus_spark_gave_its_task():
    from pyspark.resource import ResourceInformation

    assert worker.gpu_visibility({"gpu": ResourceInformation("gpu", ["1"])}) == "1"
    assert worker.gpu_visibility({"gpu": ResourceInformation("gpu", ["0", "3"])}) == "0,3"
    assert worker.gpu_visibility({}) == ""  # no GPU for the task: none visible, CPU training


def test_spark_failure_keeps_messages_and_python_traceback_not_jvm_frames():
    class Java:
        def toString(self):
            return ("org.apache.spark.SparkException: Job aborted due to stage failure: Could not recover from a "
                    "failed barrier ResultStage.\n\tat org.apache.spark.scheduler.DAGScheduler.abort(X.scala:1)\n"
                    "org.apache.spark.api.python.PythonException: Traceback (most recent call last):\n"
                    "  File \"finetune.py\", line 3, in train\nValueError: bad\n\t... 22 more\n")

    err = RuntimeError("py4j")
    err.java_exception = Java()
    assert driver.spark_failure(err) == (
        "org.apache.spark.SparkException: Job aborted due to stage failure: Could not recover from a failed barrier "
        "ResultStage.\norg.apache.spark.api.python.PythonException: Traceback (most recent call last):\n"
        "  File \"finetune.py\", line 3, in train\nValueError: bad")


# -- log relay and watchdog -------------------------------------------------------------------------------------


def _await(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_worker_records_progress_and_traceback_reach_the_driver_log(caplog):
    with caplog.at_level(logging.INFO), logrelay.RelayServer("127.0.0.1", "secret", stall_timeout_s=60) as server:
        server.begin_attempt(1)
        client = logrelay.RelayClient(server.address, "secret", rank=1, attempt=1)
        worker_log = logging.getLogger("test.worker")
        worker_log.propagate = False
        worker_log.addHandler(logrelay.RelayHandler(client))
        worker_log.info("worker 1 epoch 2/5 step 3/8 loss 0.5000")
        client.beat("tf_imported", at=123.0)
        client.beat(epoch=1, step=3)
        try:
            raise ValueError("shard is corrupt")
        except ValueError as e:
            worker_log.exception("reading failed")
            client.failed(e)
        _await(lambda: "shard is corrupt" in caplog.text and "failed with ValueError" in caplog.text)
        client.close()
        state = server.workers(1)[0]
    assert (state.rank, state.phase, state.epoch, state.step) == (1, "training", 1, 3)
    assert state.phases == {"tf_imported": 123.0}
    assert state.failure["error_type"] == "ValueError" and "shard is corrupt" in state.failure["traceback"]
    relayed = [r for r in caplog.records if r.name == "finetune.worker"]
    prefix = f"[w1 {socket.gethostname()}:{state.pid}] (attempt 1)"
    assert any(r.getMessage() == f"{prefix} worker 1 epoch 2/5 step 3/8 loss 0.5000" for r in relayed)
    assert any(r.levelno == logging.ERROR and "Traceback (most recent call last)" in r.getMessage()
               and "ValueError: shard is corrupt" in r.getMessage() for r in relayed)


def test_relay_drops_connections_without_the_token(caplog):
    with caplog.at_level(logging.INFO), logrelay.RelayServer("127.0.0.1", "secret", stall_timeout_s=60) as server:
        intruder = logrelay.RelayClient(server.address, "wrong", rank=0, attempt=0)
        _await(lambda: "without the run's token" in caplog.text)
        intruder.close()
        assert server.workers(0) == []


def test_watchdog_cancels_a_silent_worker_after_the_timeout_and_not_a_busy_one():
    """The watchdog's clock is driven by hand, one second per beat of the busy worker: the silent one is declared
    stalled at the first look after stall_timeout_s, not before, and only once."""
    now = [1000.0]
    stalls = []
    with logrelay.RelayServer("127.0.0.1", "t", stall_timeout_s=10, on_stall=stalls.append, poll_s=3600,
                              clock=lambda: now[0]) as server:
        server.begin_attempt(0)
        busy = logrelay.RelayClient(server.address, "t", rank=0, attempt=0)
        silent = logrelay.RelayClient(server.address, "t", rank=1, attempt=0)
        silent.beat(epoch=2, step=5)
        _await(lambda: [(w.rank, w.step) for w in server.workers(0)] == [(0, 0), (1, 5)])
        for step in range(1, 12):
            now[0] += 1
            busy.beat(epoch=2, step=step)
            _await(lambda: server.workers(0)[0].step == step)
            stalled = server.check_stalls()
            assert (stalled is None) == (step <= 10), (step, stalled)  # silent for `step` seconds
        assert server.stalled == stalled and server.check_stalls() is None
        busy.close()
        silent.close()
    assert stalls == [stalled]
    assert stalled == "worker 1 (%s pid %d) silent for 11s in phase training at epoch 2 step 5" % (
        socket.gethostname(), os.getpid())


def test_watchdog_fires_when_no_worker_starts():
    stalls = []
    with logrelay.RelayServer("127.0.0.1", "t", stall_timeout_s=0.5, on_stall=stalls.append, poll_s=0.05) as server:
        server.begin_attempt(3)
        _await(lambda: stalls, timeout=5)
    assert stalls == ["no worker of attempt 3 started within 0.5s (are the barrier tasks waiting for executors?)"]


def test_unreachable_relay_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError, match=f"cannot reach the driver's log relay at 127.0.0.1:{port}"):
        logrelay.RelayClient(("127.0.0.1", port), "t", rank=0, attempt=0, connect_timeout_s=2)


# -- hub modules on shared storage ------------------------------------------------------------------------------


def test_handles_are_told_apart():
    root = "hdfs://nn:8020/tfhub"
    assert hub_module.handle_for("hub/m", root) == "hdfs://nn:8020/tfhub/hub/m"
    assert hub_module.handle_for("/models/m", root) == "/models/m"
    assert hub_module.handle_for("hdfs://nn:8020/x/m", root) == "hdfs://nn:8020/x/m"
    kaggle = "google/mobilenet-v2/tensorFlow2/feature-vector/2"
    assert hub_module.handle_for(kaggle, root) == kaggle and hub_module.is_remote_handle(kaggle)
    assert hub_module.download_url(kaggle) == f"https://www.kaggle.com/models/{kaggle}"
    assert hub_module.is_remote_handle("https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5")
    assert not hub_module.is_remote_handle("hdfs://nn:8020/tfhub/hub/m")


def test_hdfs_module_is_located_sized_and_fetched_once_per_host(small_hub_module, hdfs, tmp_path):
    shutil.copytree(small_hub_module, hdfs.root / "tfhub" / "hub" / "m")
    url = hub_module.locate("hub/m", "hdfs://nn:8020/tfhub")
    assert url == "hdfs://nn:8020/tfhub/hub/m"
    assert hub_module.module_image_size(url) == (32, 32)
    with pytest.raises(hub_module.HubModuleError, match="no saved_model.pb in hdfs://nn:8020/tfhub/hub/missing"):
        hub_module.locate("hub/missing", "hdfs://nn:8020/tfhub")

    cache = tmp_path / "host-cache"
    hdfs.clear_log()
    first = hub_module.local_module(url, cache)
    assert (Path(first) / "saved_model.pb").read_bytes() == (small_hub_module / "saved_model.pb").read_bytes()
    opened = [c for c in hdfs.calls("namenode") if c[1] == "OPEN"]
    assert opened, "the module was not downloaded"
    hdfs.clear_log()
    assert hub_module.local_module(url, cache) == first
    assert not [c for c in hdfs.calls() if c[1] == "OPEN"], "the second worker downloaded it again"


class _TarballServer:
    """Serves one module as a .tar.gz over HTTP, as tfhub.dev does, and counts the downloads."""

    def __init__(self, module: Path):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            tar.add(module, arcname=".")
        body, hits = buf.getvalue(), []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.hits = hits
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/models/shapes/1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_hub_url_is_downloaded_once_into_the_shared_cache_of_a_file_root(small_hub_module, tmp_path, monkeypatch):
    monkeypatch.setenv("TFHUB_CACHE_DIR", "")
    monkeypatch.delenv("TFHUB_CACHE_DIR")  # so that the value locate() sets is undone after the test
    srv = _TarballServer(small_hub_module)
    try:
        path = hub_module.locate(srv.url, f"file://{tmp_path}")
        assert Path(path).parent == tmp_path / "tfhub_cache" and (Path(path) / "saved_model.pb").exists()
        assert hub_module.locate(srv.url, f"file://{tmp_path}") == path
    finally:
        srv.close()
    assert len(srv.hits) == 1


def test_hub_url_is_published_to_the_shared_cache_of_an_hdfs_root(small_hub_module, hdfs, tmp_path, monkeypatch):
    srv = _TarballServer(small_hub_module)
    try:
        monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "driver1-cache"))
        url = hub_module.locate(srv.url, "hdfs://nn:8020/tfhub")
        assert url == f"hdfs://nn:8020/tfhub/tfhub_cache/{hub_module.cache_key(srv.url)}"
        assert (hdfs.root / url.split("8020/", 1)[1] / "saved_model.pb").exists()
        # Another driver, with an empty local cache, finds it on HDFS and does not download it.
        monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "driver2-cache"))
        assert hub_module.locate(srv.url, "hdfs://nn:8020/tfhub") == url
    finally:
        srv.close()
    assert len(srv.hits) == 1
    assert hub_module.module_image_size(url) == (32, 32)


# -- checkpoints on hdfs:// -------------------------------------------------------------------------------------


def test_checkpoints_on_hdfs_are_copied_up_and_fetched_back_by_a_relaunched_worker(hdfs, tmp_path):
    run_dir = "hdfs://nn:8020/tfhub/runs/ds=2026-11-20"
    chief = checkpoints.TrainingStore(run_dir, tmp_path / "attempt0-w0", rank=0)
    assert chief.remote and chief.pull() is None and chief.history() == []
    (chief.checkpoints / "chief").mkdir()
    (chief.checkpoints / "chief" / "checkpoint").write_text('model_checkpoint_path: "ckpt-3"\n')
    (chief.checkpoints / "chief" / "ckpt-3.index").write_bytes(b"\x00index")
    (chief.tensorboard / "train").mkdir(parents=True)
    (chief.tensorboard / "train" / "events.out").write_bytes(b"events")
    chief.save_history([{"epoch": 1, "loss": 1.0}])
    chief.push({"epoch": 2, "step": 4, "global_step": 12, "attempt": 0, "time": 0.0})

    hdfs_run = hdfs.root / "tfhub" / "runs" / "ds=2026-11-20"
    assert (hdfs_run / "checkpoints" / "v000001" / "ckpt-3.index").read_bytes() == b"\x00index"
    assert json.loads((hdfs_run / "checkpoints" / "progress-000001.json").read_text())["version"] == 1
    assert (hdfs_run / "tensorboard" / "train" / "events.out").read_bytes() == b"events"

    for rank in (0, 1):
        again = checkpoints.TrainingStore(run_dir, tmp_path / f"attempt1-w{rank}", rank=rank)
        assert again.pull()["global_step"] == 12
        assert (again.checkpoints / "chief" / "checkpoint").read_text() == 'model_checkpoint_path: "ckpt-3"\n'
        assert (again.tensorboard / "train" / "events.out").exists() == (rank == 0)
    assert again.history() == [{"epoch": 1, "loss": 1.0}]


class _ChiefDied(Exception):
    """What the test raises inside the chief's push, where a real chief would be killed."""


@pytest.mark.parametrize("scheme", ["hdfs", "file"])
@pytest.mark.parametrize("dies_after", checkpoints.PUSH_STEPS)
def test_a_chief_killed_at_any_step_of_a_push_resumes_from_the_last_committed_checkpoint(hdfs, tmp_path, scheme,
                                                                                         dies_after):
    """Real Keras checkpoints (BackupAndRestore, every 3 steps) pushed by the real store; the chief dies in its
    second push, after the step ``dies_after``. The driver then reports, and a relaunched stage's workers fetch and
    restore, the last committed checkpoint: the first one if the second was not committed yet, else the second,
    with the weights it was saved with."""
    from tasks.training import model as M

    tf = M.tf
    if scheme == "hdfs":
        run_dir, remote_run = "hdfs://namenode:8020/tfhub/runs/ds=2026-11-20", hdfs.root / "tfhub/runs/ds=2026-11-20"
    else:
        run_dir, remote_run = f"file://{tmp_path}/storage/runs/ds=2026-11-20", tmp_path / "storage/runs/ds=2026-11-20"
    x = tf.random.stateless_uniform((16, 4), seed=(1, 2))
    y = tf.cast(tf.reduce_sum(x, axis=1) > 2, tf.int32)

    def model():
        tf.keras.utils.set_random_seed(0)
        m = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(2, activation="softmax")])
        m.compile(optimizer=tf.keras.optimizers.Adam(0.1), loss="sparse_categorical_crossentropy")
        return m

    def fit(store, pushed):
        """Trains 2 epochs of 8 steps from what ``store`` holds locally; appends (progress, weights) per push."""
        m = model()

        def after_backup(epoch, step):
            pushed.append(({"epoch": epoch + 1, "step": step, "global_step": epoch * 8 + step, "attempt": 0,
                            "time": 0.0}, m.get_weights()))
            store.push(pushed[-1][0])

        class Restored(tf.keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.weights = m.get_weights()  # after BackupAndRestore's own on_train_begin restored them

        restored, logger = Restored(), M.ProgressLogger(0, 2, 8, 2)
        m.fit(x, y, batch_size=2, epochs=2, verbose=0, shuffle=False, callbacks=[
            M.BackupAndRestoreHook(str(store.checkpoints), save_freq=3, after_backup=after_backup), restored, logger])
        return restored.weights, logger.resumed_from

    first = []

    def die(step):
        if len(first) == 2 and step == dies_after:
            raise _ChiefDied(step)

    with pytest.raises(_ChiefDied):
        fit(checkpoints.TrainingStore(run_dir, tmp_path / "a0-w0", rank=0, on_push_step=die), first)
    committed = 2 if checkpoints.PUSH_STEPS.index(dies_after) >= checkpoints.PUSH_STEPS.index("committed") else 1
    progress, weights = first[committed - 1]
    expected = {**progress, "version": committed}
    assert checkpoints.read_progress(storage.join(run_dir, "checkpoints")) == expected  # what the driver announces

    # The relaunched stage: every worker fetches the committed checkpoint; the chief restores it and resumes there.
    for rank in (1, 0):
        store = checkpoints.TrainingStore(run_dir, tmp_path / f"a1-w{rank}", rank=rank)
        assert store.pull() == expected
    again = []
    restored, resumed_from = fit(store, again)
    assert resumed_from == (expected["epoch"] - 1, expected["step"])
    assert len(restored) == len(weights) and all((a == b).all() for a, b in zip(restored, weights))
    assert again[0][0]["global_step"] == expected["global_step"] + 3
    # After the relaunch's own commits only its last one is left: no older commit, nothing a dead chief left.
    last = committed + len(again)
    assert sorted(p.name for p in (remote_run / "checkpoints").iterdir()) == [f"progress-{last:06d}.json",
                                                                              f"v{last:06d}"]


# -- the model --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fine_tune,scale,module_moves", [(False, 1.0, False), (True, 0.0, False), (True, 1.0, True)])
def test_module_is_trained_only_with_fine_tune_and_at_its_own_rate(small_hub_module, fine_tune, scale, module_moves):
    from tasks.training import model as M

    tf = M.tf
    tf.keras.utils.set_random_seed(0)
    model = M.build_model(str(small_hub_module), M.ModelConfig(num_classes=3, image_size=(32, 32),
                                                               fine_tune=fine_tune))
    trained = M.compile_for_training(model, 0.05, module_lr_scale=scale, fine_tune=fine_tune)
    assert isinstance(trained, M.TwoRateModel) == (fine_tune and scale != 1.0)
    module = model.get_layer("hub_module")
    before_module = [v.numpy().copy() for v in module.variables if v.trainable]
    before_head = model.get_layer("classifier").kernel.numpy().copy()
    x = tf.random.uniform((16, 32, 32, 3), seed=1)
    y = tf.constant([i % 3 for i in range(16)])
    trained.fit(x, y, batch_size=8, epochs=2, verbose=0)
    moved = [not (b == v.numpy()).all() for b, v in zip(before_module, [v for v in module.variables if v.trainable])]
    assert before_module and any(moved) == module_moves
    assert not (before_head == model.get_layer("classifier").kernel.numpy()).all()


def test_validation_shares_fill_the_same_steps_without_scoring_a_record_twice():
    """17 records shared by 2 workers (9 and 8) in batches of 4: 3 steps per pass for both, the smaller share's
    last batch empty, and each pass, epoch after epoch, holds every record once."""
    from tasks.training import model as M

    records = M.tf.data.Dataset.range(17)
    batches = [[b.numpy().tolist() for b in M.padded_passes(records.shard(2, rank).batch(4), 3).take(6)]
               for rank in (0, 1)]
    assert [len(b) for b in batches[1]] == [4, 4, 0] * 2
    for epoch in (0, 1):
        scored = [x for rank in (0, 1) for b in batches[rank][3 * epoch:3 * epoch + 3] for x in b]
        assert sorted(scored) == list(range(17))


@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_an_empty_validation_batch_scores_nothing(small_hub_module, scale):
    """The empty batches of ``padded_passes`` reach the test step; the model is not called on them (oneDNN's
    fused convolution fails on a batch of 0 images on AVX-512 CPUs) and they change no metric."""
    from tasks.training import model as M

    tf = M.tf
    tf.keras.utils.set_random_seed(0)
    model = M.build_model(str(small_hub_module), M.ModelConfig(num_classes=3, image_size=(32, 32), fine_tune=True))
    trained = M.compile_for_training(model, 0.05, module_lr_scale=scale)
    x = tf.random.uniform((5, 32, 32, 3), seed=2)
    y = tf.constant([0, 1, 2, 0, 1])
    alone = trained.evaluate(tf.data.Dataset.from_tensors((x, y)), verbose=0, return_dict=True)
    padded = M.padded_passes(tf.data.Dataset.from_tensors((x, y)), 3)
    scored = trained.evaluate(padded, steps=3, verbose=0, return_dict=True)
    assert scored == pytest.approx(alone)
    assert next(m for m in trained.metrics if m.name == "loss").count.numpy() == 5


def test_epoch_metrics_are_tensorboard_scalar_events(tmp_path):
    from tasks.training import model as M

    tf = M.tf
    cb = M.EpochSummaries(str(tmp_path))
    cb.on_epoch_end(0, {"loss": 0.9, "accuracy": 0.5, "val_loss": 1.1})
    cb.on_epoch_end(1, {"loss": 0.4, "accuracy": 0.8, "val_loss": 0.7})
    cb.on_train_end()
    seen = {}
    for split in ("train", "validation"):
        for path in (tmp_path / split).iterdir():
            for record in tf.data.TFRecordDataset(str(path)):
                event = tf.compat.v1.Event.FromString(record.numpy())
                for v in event.summary.value:
                    assert v.metadata.plugin_data.plugin_name == "scalars"
                    seen[(split, v.tag, event.step)] = round(float(tf.make_ndarray(v.tensor)), 4)
    assert seen == {("train", "epoch_loss", 1): 0.9, ("train", "epoch_accuracy", 1): 0.5,
                    ("validation", "epoch_loss", 1): 1.1, ("train", "epoch_loss", 2): 0.4,
                    ("train", "epoch_accuracy", 2): 0.8, ("validation", "epoch_loss", 2): 0.7}


# -- on local Spark: a failing worker -----------------------------------------------------------------------------


def test_a_failing_worker_traceback_is_in_the_driver_log_and_the_stage_is_relaunched(spark, small_hub_module,
                                                                                     tmp_path, caplog):
    from tasks import prepare_examples as P
    from tests.conftest import make_partition

    raw = make_partition(tmp_path / "raw", "2026-11-20", num_images=40)
    examples = tmp_path / "examples" / "ds=2026-11-20"
    P.run(P.Config(raw=f"file://{raw}", output=f"file://{examples}", partition="2026-11-20", min_shards=2), spark)
    manifest = json.loads((examples / "manifest.json").read_text())
    bad = next(f["name"] for f in manifest["files"]["train"] if f["records"])
    (examples / bad).write_bytes(b"this is not a TFRecord file" * 10)
    cfg = F.Config(examples=f"file://{examples}", run_dir=f"file://{tmp_path}/run", storage_root=f"file://{tmp_path}",
                   hub_module=str(small_hub_module), num_workers=2, epochs=1, batch_size=8, max_restarts=1)
    with caplog.at_level(logging.INFO), pytest.raises(driver.BarrierStageFailed, match=r"failed 2 times \(max_restarts=1\)"):
        F.run(cfg, spark)
    text = caplog.text
    assert "restart 1 of 1: relaunching the barrier stage from the start (no checkpoint yet)" in text
    relayed = [r.getMessage() for r in caplog.records if r.name == "finetune.worker"]
    tracebacks = [m for m in relayed if "failed with DataLossError" in m and "Traceback (most recent call last)" in m]
    assert len(tracebacks) >= 2, relayed[-5:]  # the worker with the corrupt file, in each attempt
    assert any("(attempt 1)" in m for m in tracebacks)
    assert not (tmp_path / "run" / "model").exists()


def test_a_frozen_worker_is_caught_by_the_watchdog_and_the_relaunched_stage_finishes(spark, small_hub_module,
                                                                                     tmp_path, caplog):
    """A worker frozen (SIGSTOP) before the rendezvous: its peer waits in allGather, where neither Spark nor
    TensorFlow would notice; the driver's watchdog must cancel the stage within stall_timeout_s."""
    import os
    import re
    import signal

    import psutil

    from tasks import prepare_examples as P
    from tests.conftest import make_partition

    raw = make_partition(tmp_path / "raw", "2026-11-20", num_images=40)
    examples = tmp_path / "examples" / "ds=2026-11-20"
    P.run(P.Config(raw=f"file://{raw}", output=f"file://{examples}", partition="2026-11-20", min_shards=2), spark)
    frozen: dict = {}

    class Freezer(logging.Handler):
        def emit(self, record):
            m = re.search(r"\[w1 [^\]]*:(\d+)\] worker 1: task attempt \d+ of stage attempt 0", record.getMessage())
            if m and not frozen:
                pid = int(m.group(1))
                assert psutil.Process(pid).exe() == psutil.Process().exe()  # a Python worker of this test's Spark
                os.kill(pid, signal.SIGSTOP)
                frozen.update(pid=pid, at=time.monotonic(), process=psutil.Process(pid))

    freezer = Freezer()
    logging.getLogger("finetune.worker").addHandler(freezer)
    cfg = F.Config(examples=f"file://{examples}", run_dir=f"file://{tmp_path}/run", storage_root=f"file://{tmp_path}",
                   hub_module=str(small_hub_module), num_workers=2, epochs=2, batch_size=8, max_restarts=1,
                   stall_timeout_s=15, module_lr_scale=0.5)  # the module's own optimizer, under the strategy
    try:
        with caplog.at_level(logging.INFO):
            history = F.run(cfg, spark)
    finally:
        logging.getLogger("finetune.worker").removeHandler(freezer)
        if frozen:  # only if Spark has not: the process this test froze, never another that took its pid since
            with contextlib.suppress(psutil.NoSuchProcess):
                frozen["process"].kill()
    assert frozen, "worker 1 never started"
    stalled = next(r for r in caplog.records if "watchdog: attempt 0 stalled" in r.getMessage())
    assert "worker 1 (" in stalled.getMessage() and f"pid {frozen['pid']}) silent for" in stalled.getMessage()
    assert "restart 1 of 1: relaunching the barrier stage from the start" in caplog.text
    assert history["restarts"] == 1 and len(history["history"]) == 2
    assert history["attempts"][0]["outcome"] == "failed" and history["attempts"][0]["reason"].startswith("worker 1 (")
    assert history["attempts"][0]["ended"] - history["attempts"][0]["started"] < cfg.stall_timeout_s + 30
    assert (tmp_path / "run" / "model" / "saved_model.pb").exists()
