"""The DAG as a user works with it in the Airflow UI, in a real headless Chromium against the session's
``airflow standalone``: trigger a run from the form for a named partition key with approval required, approve it
in the run's Required Actions with a comment, see the version published, open the run page's Evaluation tab (one
click: the report with the accuracy, the confusion matrix and the training curves, and the link to the published
version), and open the evaluation report from the task's link.

The same run is the approved path of the approval step (tests/e2e/test_approval.py has the rejected and the
timed-out ones): while it waits, the request over the REST API the UI reads (its options, metrics, baseline and
report link), nothing exported and the run still running; once approved, the decision, the reviewer and the
comment in the blessing record and the task log, and every link of the run opening what a browser shows. One run
serves both: a whole-DAG run costs minutes on this machine (issue 19).

It saves the screenshots the operations guide shows: the approval step (``docs/img/approval.png``) and the run's
Evaluation tab (``docs/img/evaluation_tab.png``).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pytest
import requests

from tasks.demo import make_dataset
from tests.e2e.test_approval import (ANSWER_AFTER_S, HITL, awaiting_input, blessing, links,
                                     task_log)
from tests.support.airflow_standalone import patient

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DAG = "tfhub_finetune"
KEY = "2026-11-13"
SCREENSHOT = ROOT / "docs" / "img" / "approval.png"
EVALUATION_SCREENSHOT = ROOT / "docs" / "img" / "evaluation_tab.png"
COMMENT = "Curves converge, every class above 0.9 recall."


@pytest.fixture(scope="module")
def af(scheduler_airflow):
    return scheduler_airflow


def chromium():
    """Debian's headless Chromium through its chromedriver (never a driver Selenium would download), on a profile
    of its own."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def test_browser_triggers_approves_and_opens_the_report(af, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    make_dataset.run(make_dataset.Config(raw_root=f"file://{af.storage}/raw", ds=KEY, num_images=64))
    af.patch(f"/dags/{DAG}", {"is_paused": False})
    browser = chromium()
    try:
        wait = WebDriverWait(browser, 120)
        browser.get(f"{af.url}/dags/{DAG}")
        wait.until(ec.element_to_be_clickable((By.XPATH, "//button[normalize-space()='Trigger']"))).click()
        form = wait.until(ec.visibility_of_element_located((By.NAME, "element_epochs")))

        def set_value(name: str, text: str) -> None:
            field = browser.find_element(By.NAME, name)
            browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", field)
            field.click()
            field.send_keys(Keys.CONTROL, "a")
            field.send_keys(text)

        assert form.get_attribute("value") == "15"  # the param's default, shown by the form
        set_value("element_epochs", "1")
        set_value("element_num_workers", "1")
        set_value("element_min_accuracy", "0")
        set_value("element_baseline_tolerance", "1")
        choose(browser, wait, "element_approval", "required")
        # The run's Partition Key is under the form's Advanced Options.
        browser.find_element(By.XPATH, "//*[@role='dialog']//button[contains(., 'Advanced Options')]").click()
        wait.until(ec.visibility_of_element_located((By.NAME, "partitionKey")))
        set_value("partitionKey", KEY)
        browser.find_element(By.XPATH, "//*[@role='dialog']//button[normalize-space()='Trigger']").click()

        def triggered():
            return [x for x in af.runs(DAG) if x.get("partition_key") == KEY and x["run_type"] == "manual"]

        run = af.wait_for(patient(triggered), 120, "a run triggered from the browser")[0]
        run_id = run["dag_run_id"]
        assert run["conf"]["epochs"] == 1 and run["conf"]["num_workers"] == 1
        assert run["conf"]["approval"] == "required"

        awaiting_input(af, run_id)
        check_the_waiting_request(af, run_id)
        # The run's Required Actions: the request with its metrics and links, and the two answers.
        browser.get(f"{af.url}/dags/{DAG}/runs/{run_id}/tasks/approve/required_actions")
        wait.until(ec.element_to_be_clickable((By.XPATH, "//button[normalize-space()='Approve']")))
        wait.until(ec.presence_of_element_located((By.XPATH, "//*[contains(., 'Evaluation report')]")))
        wait.until(ec.presence_of_element_located((By.XPATH, "//td[normalize-space()='candidate']")))
        # The reviewer's comment, the request's one form field.
        comment = wait.until(ec.visibility_of_element_located((By.NAME, "element_comment")))
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", comment)
        comment.click()
        comment.send_keys(COMMENT)
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SCREENSHOT))
        assert not (af.storage / f"serving/shapes/{KEY.replace('-', '')}").exists()
        time.sleep(ANSWER_AFTER_S)  # as a person would: see test_approval.ANSWER_AFTER_S
        wait.until(ec.element_to_be_clickable((By.XPATH, "//button[normalize-space()='Approve']"))).click()

        def finished():
            state = af.get(f"/dags/{DAG}/dagRuns/{run_id}")["state"]
            return state if state in ("success", "failed") else None

        assert af.wait_for(patient(finished), 900, f"end of run {run_id}") == "success", af.task_states(DAG, run_id)
        assert (af.storage / f"serving/shapes/{KEY.replace('-', '')}/saved_model.pb").exists()
        browser.get(f"{af.url}/dags/{DAG}/runs/{run_id}")
        # The run's page shows its state (as "Success"): what the user sees after approving.
        wait.until(ec.presence_of_element_located(
            (By.XPATH, "//*[contains(translate(normalize-space(.), 'SUCES', 'suces'), 'success')]")))

        # Click 1 from the run's page: its Evaluation tab shows the report, plots included, in a frame.
        metrics = json.loads((af.storage / f"runs/ds={KEY}/metrics.json").read_text())
        wait.until(ec.element_to_be_clickable(
            (By.XPATH, "//a[@title='Evaluation' or normalize-space()='Evaluation']"))).click()
        wait.until(ec.frame_to_be_available_and_switch_to_it((By.XPATH, "//iframe[@title='Evaluation']")))
        heading = wait.until(ec.presence_of_element_located((By.TAG_NAME, "h1")))
        assert heading.text == f"Evaluation of partition ds={KEY}"
        assert f"accuracy {metrics['accuracy']:.4f}" in browser.find_element(By.TAG_NAME, "body").text
        matrix = browser.find_element(By.XPATH, "//img[@alt='confusion matrix']")
        wait.until(lambda b: b.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0",
                                              matrix))
        assert browser.find_element(By.XPATH, "//img[@alt='training curves']")
        assert browser.find_element(By.PARTIAL_LINK_TEXT, f"Published version {KEY.replace('-', '')}")
        browser.switch_to.default_content()
        browser.save_screenshot(str(EVALUATION_SCREENSHOT))

        # The evaluate task's Evaluation report button (its Extra Links, on the task's Details tab) opens the
        # report, with the accuracy in it.
        browser.get(f"{af.url}/dags/{DAG}/runs/{run_id}/tasks/evaluate/details")
        button = wait.until(ec.element_to_be_clickable(
            (By.XPATH, "//*[self::a or self::button][normalize-space()='Evaluation report']")))
        tabs = set(browser.window_handles)
        button.click()
        wait.until(lambda b: len(b.window_handles) > len(tabs) or "/tfhub/files/" in b.current_url)
        if new_tab := set(browser.window_handles) - tabs:
            browser.switch_to.window(new_tab.pop())
        heading = wait.until(ec.presence_of_element_located((By.TAG_NAME, "h1")))
        assert heading.text == f"Evaluation of partition ds={KEY}"
        assert f"accuracy {metrics['accuracy']:.4f}" in browser.find_element(By.TAG_NAME, "body").text
        # Its plots show: the browser loaded the confusion matrix beside it.
        assert browser.execute_script(
            "return [...document.images].filter(i => i.complete && i.naturalWidth > 0).length") >= 2
        browser.save_screenshot(str(tmp_path / "report.png"))
    finally:
        browser.quit()
        af.patch(f"/dags/{DAG}", {"is_paused": True})
    check_the_approved_run(af, run_id)


def check_the_waiting_request(af, run_id: str) -> None:
    """Waiting: nothing exported, the run is running, and the request (over the REST API the UI reads) shows what a
    reviewer decides on."""
    states = af.task_states(DAG, run_id)
    assert states["gate"] == "success" and states["export_model"] in (None, "none", "no_status"), states
    assert af.get(f"/dags/{DAG}/dagRuns/{run_id}")["state"] == "running"
    assert not (af.storage / f"serving/shapes/{KEY.replace('-', '')}").exists()
    detail = af.get(f"/dags/{DAG}/dagRuns/{run_id}{HITL}")
    metrics = json.loads((af.storage / f"runs/ds={KEY}/metrics.json").read_text())
    assert detail["options"] == ["Approve", "Reject"]
    assert f"accuracy {metrics['accuracy']:.4f}" in detail["subject"]
    body = detail["body"]
    assert f"**{metrics['accuracy']:.4f}**" in body
    for name, m in metrics["per_class"].items():  # the recall of every class
        assert f"| {name} | {m['recall']:.3f} |" in body
    assert "| baseline" in body
    report = f"{af.url}/tfhub/files/runs/ds={KEY}/report.md"
    assert f"[Evaluation report]({report})" in body
    # The report link opens the rendered report, its accuracy in it.
    page = requests.get(report, timeout=30)
    assert page.status_code == 200 and f"<strong>{metrics['accuracy']:.4f}</strong>" in page.text
    assert "approval" not in blessing(af, KEY)
    assert detail["params"]["comment"]["value"] is None  # the request's form: an optional comment


def check_the_approved_run(af, run_id: str) -> None:
    """Approved: exported, the decision with its reviewer and comment recorded and logged, every link working."""
    states = af.task_states(DAG, run_id)
    assert states["approve"] == "success" and states["export_model"] == "success", states
    decision = blessing(af, KEY)["approval"]
    assert decision["decision"] == "approved" and decision["by"], decision
    assert decision["comment"] == COMMENT, decision
    log = task_log(af, run_id, "approve")
    assert "APPROVED" in log and f"reviewer's comment: {COMMENT}" in log
    # The run's links: each opens something a browser shows.
    assert set(links(af, run_id, "evaluate")) >= {"Evaluation report", "Confusion matrix", "Training curves"}
    for task_id, name, check in [
            ("evaluate", "Confusion matrix", lambda r: r.headers["content-type"] == "image/png"),
            ("finetune", "Training curves", lambda r: r.headers["content-type"] == "image/png"),
            ("approve", "Evaluation report", lambda r: "<h1>Evaluation of partition" in r.text),
            ("export_model", "Published version", lambda r: "saved_model.pb" in r.text)]:
        url = links(af, run_id, task_id)[name]
        r = requests.get(url, timeout=30)
        assert r.status_code == 200 and check(r), (task_id, name, url, r.status_code, r.text[:300])


def choose(browser, wait, name: str, option: str) -> None:
    """Picks ``option`` in the form's drop-down of an enum param."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    # The drop-down is a combobox; the form's value is in a hidden input after it.
    field = browser.find_element(By.XPATH, f"//input[@name='{name}']/preceding::input[@role='combobox'][1]")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", field)
    field.click()
    wait.until(ec.element_to_be_clickable((By.XPATH, f"//*[@role='option'][normalize-space()='{option}']"))).click()
