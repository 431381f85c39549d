"""Order of the modules that share the session's ``airflow standalone`` (``scheduler_airflow``)."""

from __future__ import annotations

# They unpause tfhub_finetune, which makes the scheduler create the run of the day that just ended: they run after
# test_scheduler.py, whose late-partition test expects to be the first to unpause it (see scheduler_airflow).
AFTER_THE_SCHEDULER_TESTS = ("test_approval.py", "test_browser.py")


def pytest_collection_modifyitems(session, config, items) -> None:
    later = [i for i in items if i.path.name in AFTER_THE_SCHEDULER_TESTS]
    scheduler = [k for k, i in enumerate(items) if i.path.name == "test_scheduler.py"]
    if not later or not scheduler:
        return
    rest = [i for i in items if i.path.name not in AFTER_THE_SCHEDULER_TESTS]
    last = max(k for k, i in enumerate(rest) if i.path.name == "test_scheduler.py")
    items[:] = rest[:last + 1] + later + rest[last + 1:]
