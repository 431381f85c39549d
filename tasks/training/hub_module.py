"""Resolving a TF Hub module handle and the image size it expects.

``hub_module`` may be a local path, a ``file://`` or ``hdfs://`` URL, a path relative to the storage root, a
tfhub.dev / Kaggle URL or a Kaggle handle. URLs and handles go through ``tensorflow_hub.resolve`` (which downloads
into ``TFHUB_CACHE_DIR``); nothing else is downloaded from outside the cluster.

For distributed training the driver turns any handle into a *module URL* on the pipeline's storage with
``locate``, once, and the workers read that (``local_module``), so N workers never download N copies:

- a path or a ``file://``/``hdfs://`` URL is used where it is;
- a hub URL or Kaggle handle under a ``file://`` storage root is downloaded into ``<root>/tfhub_cache``
  (``TFHUB_CACHE_DIR``, shared storage), which the workers then read;
- under an ``hdfs://`` storage root it is downloaded once by the driver and published to
  ``<root>/tfhub_cache/<sha1 of the handle>``, where later runs find it without downloading.

A worker gets an ``hdfs://`` module into a per-host cache folder, under a file lock, so workers on one host share
one copy.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from tasks.io import commit, storage

log = logging.getLogger(__name__)

INFO_PATH = "assets.extra/module_info.json"
"""Where a module built by this project records its input size and provenance."""


class HubModuleError(RuntimeError):
    pass


def save_module(module, info: dict, output: str, check=None) -> None:
    """Saves a module this project builds: the TF2 SavedModel of ``module`` and its ``INFO_PATH``, into ``output``
    atomically (a staging folder, committed whole; removed on failure).

    Args:
        module: what ``tf.saved_model.save`` saves.
        info: the module info (input size, provenance).
        output: storage URL of the module folder; replaced whole if it exists.
        check: called with the staging folder once saved, before the commit (raises to refuse it).
    """
    import tensorflow as tf

    staging = commit.output_staging(output)
    try:
        tf.saved_model.save(module, str(staging))
        (staging / INFO_PATH).parent.mkdir(parents=True, exist_ok=True)
        (staging / INFO_PATH).write_text(json.dumps(info, indent=2))
        if check is not None:
            check(staging)
        commit.publish_dir(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def handle_for(hub_module: str, storage_root: str) -> str:
    """The handle to pass to ``tensorflow_hub``: relative paths are taken under the storage root."""
    if "://" in hub_module or hub_module.startswith("/"):
        return hub_module
    if _looks_like_kaggle_handle(hub_module):
        return hub_module
    return storage.join(storage_root, hub_module)


def _looks_like_kaggle_handle(h: str) -> bool:
    # owner/model/framework/variation[/version], e.g. google/mobilenet-v2/tensorFlow2/classification/2
    parts = h.split("/")
    return len(parts) >= 4 and parts[2].lower() in ("tensorflow2", "tfjs", "tflite")


KAGGLE_MODELS = "https://www.kaggle.com/models/"


def download_url(handle: str) -> str:
    """The URL ``tensorflow_hub`` downloads a remote handle from: a bare Kaggle handle becomes its
    ``kaggle.com/models`` URL (tensorflow_hub would take it for a local path); URLs are kept."""
    return KAGGLE_MODELS + handle if _looks_like_kaggle_handle(handle) else handle


def is_remote_handle(handle: str) -> bool:
    """Whether the handle names a module to download (a hub URL or a Kaggle handle), not a storage path."""
    return handle.startswith(("http://", "https://")) or _looks_like_kaggle_handle(handle)


def resolve(handle: str) -> str:
    """A local folder holding the module's SavedModel.

    Raises:
        HubModuleError: naming the handle, when it is a local path without a SavedModel, or an ``hdfs://`` URL
            (use ``locate`` and ``local_module`` for those).
    """
    if handle.startswith("file://") or handle.startswith("/"):
        path = storage.local_path(handle)
        if not (path / "saved_model.pb").exists():
            raise HubModuleError(
                f"hub_module {handle!r}: no saved_model.pb in {path}; build the demo module with "
                "`make hub-module` or pass a TF Hub URL or handle"
            )
        return str(path)
    if "://" in handle and not handle.startswith(("http://", "https://")):
        raise HubModuleError(f"hub_module {handle!r}: scheme not supported by this stage")
    import tensorflow_hub as hub

    return hub.resolve(download_url(handle))


def cache_key(handle: str) -> str:
    """The folder name of a downloaded module in a shared cache (tensorflow_hub's own naming: sha1 of the handle)."""
    return hashlib.sha1(handle.encode("utf-8")).hexdigest()


def locate(hub_module: str, storage_root: str) -> str:
    """Where the workers read the module from: a local path or a storage URL holding its SavedModel.

    Downloads a hub URL or Kaggle handle at most once per storage root (see the module docstring).

    Raises:
        HubModuleError: naming the handle and the place looked at, when there is no SavedModel there.
    """
    handle = handle_for(hub_module, storage_root)
    if not is_remote_handle(handle):
        if storage.scheme(handle) == "hdfs":
            if not storage.exists(storage.join(handle, "saved_model.pb")):
                raise HubModuleError(f"hub_module {hub_module!r}: no saved_model.pb in {handle}")
            return handle
        return resolve(handle)
    if not storage.is_remote(storage_root):
        configure_cache(storage_root)
        path = resolve(handle)
        log.info("hub module %s is in the shared cache at %s", handle, path)
        return path
    shared = storage.join(storage_root, "tfhub_cache", cache_key(handle))
    if storage.exists(storage.join(shared, "saved_model.pb")):
        log.info("hub module %s is in the shared cache at %s", handle, shared)
        return shared
    downloaded = resolve(handle)
    copy = Path(tempfile.mkdtemp(prefix="hub-module-"))
    shutil.copytree(downloaded, copy, dirs_exist_ok=True)
    commit.publish_dir(copy, shared)
    log.info("hub module %s downloaded to %s and published to the shared cache at %s", handle, downloaded, shared)
    return shared


def module_info(module_url: str) -> dict | None:
    """The ``module_info.json`` of a module given by ``locate``, or None (modules not built by this project)."""
    info = storage.join(module_url, INFO_PATH)
    return json.loads(storage.read_text(info)) if storage.exists(info) else None


def check_kind(module_url: str, wanted: str, task_type: str) -> None:
    """Fails when the module says it is another kind (e.g. an image module for text classification); a module
    that does not say is taken as it is, and a wrong one fails when the model is built.

    Raises:
        HubModuleError: naming the module, its kind and the task type.
    """
    info = module_info(module_url)
    kind = (info or {}).get("kind")
    if kind is not None and kind != wanted:
        raise HubModuleError(f"hub module {module_url} is of kind {kind!r}, but the dataset is for {task_type}, "
                             f"which fine-tunes a module of kind {wanted!r}: set hub_module to one")


def module_image_size(module_url: str, override: int | None = None) -> tuple[int, int]:
    """``image_size`` of a module given by ``locate``: reads only ``module_info.json`` when the module has one."""
    if storage.scheme(module_url) == "file":
        return image_size(str(storage.local_path(module_url)), override)
    if override:
        return (override, override)
    info = module_info(module_url)
    if info is not None:
        h, w = info["image_size"]
        return (int(h), int(w))
    with tempfile.TemporaryDirectory(prefix="hub-module-") as tmp:
        return image_size(str(storage.fetch(module_url, tmp)))


def local_module(module_url: str, cache_root: os.PathLike | str) -> str:
    """A local folder with the module given by ``locate``: the path itself, or for ``hdfs://`` a copy in
    ``cache_root`` shared by the processes of this host (the first one downloads, the others wait on a lock).

    The copy is keyed by the URL and the modification time of its ``saved_model.pb``, so a module replaced on
    HDFS is fetched again.
    """
    if storage.scheme(module_url) == "file":
        return str(storage.local_path(module_url))
    st = storage.webhdfs().status(storage.join(module_url, "saved_model.pb"))
    if st is None:
        raise HubModuleError(f"hub module {module_url}: no saved_model.pb there")
    key = cache_key(f"{module_url}@{st['modificationTime']}")
    root = Path(cache_root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / key
    with open(root / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "saved_model.pb").exists():
            with tempfile.TemporaryDirectory(prefix=f".{key}.", dir=root) as tmp:
                fetched = storage.fetch(module_url, tmp)
                shutil.rmtree(target, ignore_errors=True)
                os.rename(fetched, target)
            log.info("hub module %s fetched to %s", module_url, target)
    return str(target)


def image_size(module_dir: str, override: int | None = None) -> tuple[int, int]:
    """The (height, width) the module expects.

    Taken from, in order: an explicit ``override``; the module's ``assets.extra/module_info.json``; the static
    shape of the module's traced ``__call__`` input.

    Raises:
        HubModuleError: when none of them says, asking for an explicit size.
    """
    if override:
        return (override, override)
    info = Path(module_dir) / INFO_PATH
    if info.exists():
        h, w = json.loads(info.read_text())["image_size"]
        return (int(h), int(w))
    import tensorflow as tf

    loaded = tf.saved_model.load(module_dir)
    for fn in getattr(loaded.__call__, "concrete_functions", []) or []:
        spec = fn.structured_input_signature[0][0]
        shape = getattr(spec, "shape", None)
        if shape is not None and shape.rank == 4 and shape[1] and shape[2]:
            return (int(shape[1]), int(shape[2]))
    raise HubModuleError(
        f"module {module_dir} does not record its input size and its signature leaves it open: set the DAG's "
        "image_size param (the finetune job's --image-size) to the height and width in pixels it expects, e.g. 224"
    )


def configure_cache(storage_root: str) -> None:
    """Points ``TFHUB_CACHE_DIR`` at shared storage unless the environment already set it."""
    if "TFHUB_CACHE_DIR" not in os.environ and not storage.is_remote(storage_root):
        os.environ["TFHUB_CACHE_DIR"] = str(storage.local_path(storage.join(storage_root, "tfhub_cache")))
