"""Rules the DAGs' Param schemas share, and the Params both DAGs declare alike.

``FOLDER_NAME``: a ``dataset`` or ``model_name`` is one plain folder name (letters, digits, ``_ . -``, not starting
with a dot). A leading dot would allow ``.`` and ``..`` (a run reading and writing beside the storage root, or
publishing into it) and hidden names, which the storage layer keeps for its own staging folders. The jobs check the
same rule on their side (``tasks/io/storage.py``, ``check_name``); ``tests/dags/test_params_paths.py`` checks that the
two agree.
"""

from __future__ import annotations

from airflow.sdk import Param

FOLDER_NAME = "^[A-Za-z0-9_-][A-Za-z0-9_.-]*$"


def input_column_params() -> dict[str, Param]:
    """The Params naming a raw record's input column, image or text: data prep and batch scoring read raw
    partitions with the same reader (``tasks/prep/layouts.py``), so they mean the same in both DAGs."""
    return {
        "image_column": Param("image", type="string", minLength=1,
                              description="parquet layout, images: column of the encoded image bytes."),
        "text_column": Param("text", type="string", minLength=1, description="Text tables: column of the text."),
    }
