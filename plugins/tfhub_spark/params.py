"""Rules the DAGs' Param schemas share.

``FOLDER_NAME``: a ``dataset`` or ``model_name`` is one plain folder name (letters, digits, ``_ . -``, not starting
with a dot). A leading dot would allow ``.`` and ``..`` (a run reading and writing beside the storage root, or
publishing into it) and hidden names, which the storage layer keeps for its own staging folders. The jobs check the
same rule on their side (``tasks/io/storage.py``, ``check_name``); ``tests/dags/test_params_paths.py`` checks that the
two agree.
"""

FOLDER_NAME = "^[A-Za-z0-9_-][A-Za-z0-9_.-]*$"
