"""Resolving a TF Hub module handle and the image size it expects.

``hub_module`` may be a local path, a ``file://`` URL, a path relative to the storage root, a tfhub.dev /
Kaggle URL or a Kaggle handle. URLs and handles go through ``tensorflow_hub.resolve`` (which downloads into
``TFHUB_CACHE_DIR``); nothing else is downloaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tasks import storage

INFO_PATH = "assets.extra/module_info.json"
"""Where a module built by this project records its input size and provenance."""


class HubModuleError(RuntimeError):
    pass


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


def resolve(handle: str) -> str:
    """A local folder holding the module's SavedModel.

    Raises:
        HubModuleError: naming the handle, when it is a local path without a SavedModel.
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

    return hub.resolve(handle)


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
        f"module {module_dir} does not record its input size and its signature leaves it open; "
        "set the image_size option"
    )


def configure_cache(storage_root: str) -> None:
    """Points ``TFHUB_CACHE_DIR`` at shared storage unless the environment already set it."""
    if "TFHUB_CACHE_DIR" not in os.environ and not storage.is_remote(storage_root):
        os.environ["TFHUB_CACHE_DIR"] = str(storage.local_path(storage.join(storage_root, "tfhub_cache")))
