"""The dashboard in a real headless Chromium (Debian's chromium + chromedriver, driven by
Selenium) against a real `kd serve`: log in, upload a teacher and submit a job through
the form (with a validation message on the way), watch it finish with live curves, read
the report and see the downloads. Screenshots are kept in out/test-artifacts/."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from safetensors.torch import save
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

import kdcore
from kdcore.models import build_model
from tests.support.procs import TRAINING_IN_A_THREAD, serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ARTIFACTS = Path(__file__).resolve().parents[2] / "out" / "test-artifacts"
DATA_DIRS: dict[str, Path] = {}  # each server's data folder, by its URL


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    workdir = tmp_path_factory.mktemp("dashboard")
    env = {"KD_DATA_DIR": str(workdir / "data"), "KD_DATABASE_URL": "", "KD_BROKER_URL": ""}
    proc, url = serve({**env, **TRAINING_IN_A_THREAD}, workdir / "serve.log")
    DATA_DIRS[url] = workdir / "data"
    try:
        yield url, (workdir / "data" / "api_key").read_text().strip()
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1100",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, css: str, timeout: float = 30) -> object:
    return WebDriverWait(driver, timeout).until(lambda d: d.find_element(By.CSS_SELECTOR, css))


def attribute(driver: WebDriver, css: str, name: str, timeout: float = 10) -> str:
    """An attribute of an element the page may be re-rendering (retried while stale)."""
    found: dict[str, str] = {}

    def read(d: WebDriver) -> bool:
        try:
            found["v"] = d.find_element(By.CSS_SELECTOR, css).get_attribute(name) or ""
        except (StaleElementReferenceException, NoSuchElementException):
            return False
        return True

    WebDriverWait(driver, timeout).until(read)
    return found["v"]


def upload(url: str, key: str, name: str, content: bytes, purpose: str) -> httpx.Response:
    """POST /v1/files as a client would; the answer, checked to be a 201."""
    up = httpx.post(
        f"{url}/v1/files",
        files={"file": (name, content)},
        data={"purpose": purpose},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert up.status_code == 201, up.text
    return up


def set_value(driver: WebDriver, field: str, value: str) -> None:
    element = driver.find_element(By.ID, field)
    element.clear()
    element.send_keys(value)


def test_submit_through_the_form_and_watch_it_finish(
    server: tuple[str, str], browser: WebDriver, tmp_path: Path
) -> None:
    url, key = server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # a teacher trained on the digits the form distils on (the preflight fails a job
    # whose teacher is near chance): a few seconds of kdcore
    kdcore.train(
        {
            "name": "form-teacher",
            "kind": "train",
            "student": {"arch": "small_cnn"},
            "dataset": {"builtin": "digits"},
            "training": {"epochs": 3, "batch_size": 32, "precision": "fp32"},
        },
        tmp_path / "trained",
    )
    teacher = tmp_path / "teacher.safetensors"
    teacher.write_bytes((tmp_path / "trained" / "student.safetensors").read_bytes())

    # log in: nothing of the logged-in header shows before; a wrong key is refused, the
    # right one opens the job list
    browser.get(url + "/")
    wait_for(browser, "#login-form")
    assert not browser.find_element(By.ID, "logout").is_displayed()
    assert not browser.find_element(By.ID, "nav-new").is_displayed()
    set_value(browser, "api-key", "kd_wrong")
    browser.find_element(By.ID, "login").click()
    WebDriverWait(browser, 10).until(
        lambda d: "refused" in d.find_element(By.ID, "login-error").text
    )
    set_value(browser, "api-key", key)
    browser.find_element(By.ID, "login").click()
    wait_for(browser, "#jobs-body")
    WebDriverWait(browser, 10).until(
        lambda d: "tenant: default" in d.find_element(By.ID, "tenant").text
    )
    assert browser.find_element(By.ID, "logout").is_displayed()

    # the form: upload the teacher, choose data, student, method, hyperparameters
    browser.get(url + "/#/new")
    wait_for(browser, "#new-job-form")
    set_value(browser, "name", "browser-kd")
    Select(browser.find_element(By.ID, "teacher_arch")).select_by_value("small_cnn")
    Select(browser.find_element(By.ID, "student_arch")).select_by_value("mlp_small")
    # each method shows its own defaults (GET /v1/capabilities: method_defaults)
    Select(browser.find_element(By.ID, "method")).select_by_value("at")
    assert browser.find_element(By.ID, "ce_weight").get_attribute("value") == "1"
    assert browser.find_element(By.ID, "kd_weight").get_attribute("value") == "0"
    Select(browser.find_element(By.ID, "method")).select_by_value("kd")
    assert browser.find_element(By.ID, "kd_weight").get_attribute("value") == "0.9"
    browser.find_element(By.ID, "teacher_file").send_keys(str(teacher))
    WebDriverWait(browser, 30).until(
        lambda d: "uploaded as file_" in d.find_element(By.ID, "teacher-file-id").text
    )
    set_value(browser, "image_size", "8")
    set_value(browser, "epochs", "0")
    browser.find_element(By.ID, "validate").click()
    # the server's validation message lands under the field it is about
    WebDriverWait(browser, 10).until(
        lambda d: d.find_element(By.CSS_SELECTOR, '[data-error-for="epochs"]').text != ""
    )
    assert "/training/epochs" in browser.find_element(By.ID, "validation-messages").text
    set_value(browser, "epochs", "4")
    browser.find_element(By.ID, "baseline").click()
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 20).until(lambda d: "#/jobs/job_" in d.current_url)
    job_id = browser.current_url.rsplit("/", 1)[1]

    # the job page follows the SSE stream until the job ends
    deadline = time.monotonic() + 240
    status = ""
    while time.monotonic() < deadline and status not in ("succeeded", "failed", "cancelled"):
        time.sleep(1)
        status = attribute(browser, "#job-head .status", "data-status")
    assert status == "succeeded", attribute(browser, "#job-head", "innerText")
    WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.ID, "curves-png"))
    series = browser.execute_script(
        "return [...document.querySelectorAll('.chart path.series')]"
        ".map(p => p.closest('.chart').id + ':' + p.dataset.series)"
    )
    # baseline: true: the student and the baseline each have their own curve, column
    # and figures; the KD verdict is the report's, coloured by its sign
    assert {
        "loss-chart:loss",
        "loss-chart:kd",
        "accuracy-chart:student",
        "accuracy-chart:baseline (no teacher)",
    } <= set(series), series
    auth = {"Authorization": f"Bearer {key}"}
    done = httpx.get(f"{url}/v1/jobs/{job_id}", headers=auth).json()
    figures = done["report"]
    head = browser.execute_script(
        "return [...document.querySelectorAll('#report-table th')].map(th => th.textContent)"
    )
    assert head == ["", "teacher", "student", "baseline (no teacher)"], head
    accuracy_row = browser.execute_script(
        "return [...document.querySelectorAll('#report-table tr[data-row=accuracy] td')]"
        ".map(td => td.textContent)"
    )
    assert accuracy_row == [
        "accuracy",
        f"{100 * figures['teacher']['accuracy']:.2f} %",
        f"{100 * figures['student']['accuracy']:.2f} %",
        f"{100 * figures['baseline']['accuracy']:.2f} %",
    ], accuracy_row
    verdict = browser.find_element(By.ID, "kd-verdict")
    assert verdict.text == figures["kd_verdict"]
    assert verdict.get_attribute("class") == ("pass" if figures["kd_helped"] else "fail")
    assert "points" in browser.find_element(By.ID, "report-summary").text
    assert "compression" in browser.find_element(By.ID, "report-summary").text
    progress_text = attribute(browser, "#progress-text", "innerText")
    assert progress_text.startswith("student: 4 epochs"), progress_text
    # the job's figures are the student's last epoch; the baseline's are its own
    epochs, after = [], 0
    while after is not None:
        page = httpx.get(
            f"{url}/v1/jobs/{job_id}/events", params={"after": after}, headers=auth
        ).json()
        epochs += [e["data"] for e in page["data"] if e["type"] == "epoch"]
        after = page["next_after"]
    student_last = [e for e in epochs if e["model"] == "student"][-1]
    baseline_last = [e for e in epochs if e["model"] == "baseline"][-1]
    assert done["metrics"] == student_last["metrics"]
    assert done["baseline_metrics"] == baseline_last["metrics"]
    assert done["progress"]["model"] == "baseline"  # the last phase that ran, labelled
    report = attribute(browser, "#report-table", "innerText").lower()
    assert "teacher" in report and "student" in report and "small_cnn" in report
    timeline = attribute(browser, "#timeline", "innerText")
    assert "queued" in timeline and "running" in timeline and "succeeded" in timeline
    buttons = {
        b.get_attribute("data-artifact")
        for b in browser.find_elements(By.CSS_SELECTOR, "#downloads button")
    }
    assert {"student.safetensors", "student.json", "report.json", "curves.png"} <= buttons
    # each download shows the sha256 the API gives, and a command that fetches it
    listed = httpx.get(f"{url}/v1/jobs/{job_id}/artifacts", headers=auth).json()
    shown = browser.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#downloads-table "
        "tr[data-artifact-row]')].map(tr => [tr.dataset.artifactRow, "
        "tr.querySelector('td.sha256').dataset.sha256]))"
    )
    assert shown == {a["name"]: a["sha256"] for a in listed}
    weights_id = next(a["id"] for a in listed if a["name"] == "student.safetensors")
    command = attribute(browser, '[data-copy="student.safetensors"]', "title")
    assert command.startswith("curl ") and f"/v1/artifacts/{weights_id}/content" in command
    # the charts: round ticks on the axis, and a tooltip on every epoch's point
    ticks = browser.execute_script(
        "return document.querySelectorAll('#accuracy-chart text.tick.y').length"
    )
    assert ticks >= 3
    tips = browser.execute_script(
        "return [...document.querySelectorAll('#accuracy-chart circle.point title')]"
        ".map(t => t.textContent)"
    )
    last = f"student: epoch 4, {round(student_last['metrics']['accuracy'], 4)}"
    assert last in tips, tips
    time.sleep(0.5)  # let the last chart redraw settle before the picture
    browser.save_screenshot(str(ARTIFACTS / "dashboard-job.png"))

    # the spec, read-only and whole; "submit again" opens the form filled in with it,
    # and a submission without changes makes the same job
    import json as _json

    shown = _json.loads(attribute(browser, "#job-spec", "textContent"))
    assert shown == done["spec"]
    browser.find_element(By.ID, "submit-again").click()
    wait_for(browser, "#from-job")
    assert browser.find_element(By.ID, "name").get_attribute("value") == "browser-kd"
    assert browser.find_element(By.ID, "epochs").get_attribute("value") == "4"
    assert browser.find_element(By.ID, "image_size").get_attribute("value") == "8"
    assert browser.find_element(By.ID, "baseline").is_selected()
    assert (
        browser.find_element(By.ID, "teacher_source").get_attribute("value")
        == (done["spec"]["teacher"]["checkpoint"])
    )
    set_value(browser, "name", "browser-kd-again")
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 20).until(
        lambda d: "#/jobs/job_" in d.current_url and job_id not in d.current_url
    )
    again_id = browser.current_url.rsplit("/", 1)[1]
    again = httpx.get(f"{url}/v1/jobs/{again_id}", headers=auth).json()
    assert {**again["spec"], "name": "browser-kd"} == done["spec"]
    httpx.post(f"{url}/v1/jobs/{again_id}/cancel", headers=auth)

    # the list shows it with its status colour
    browser.get(url + "/#/jobs")
    row = wait_for(browser, f'tr[data-job-id="{job_id}"]')
    badge = row.find_element(By.CSS_SELECTOR, ".status")  # type: ignore[attr-defined]
    assert badge.get_attribute("data-status") == "succeeded"
    # what a list needs to tell jobs apart: the models, the student's size, how long
    # it ran, and when it was made, in a named time zone
    cells = {
        td.get_attribute("data-column"): td.text
        for td in row.find_elements(By.CSS_SELECTOR, "td")  # type: ignore[attr-defined]
    }
    assert cells["models"] == "small_cnn → mlp_small"
    assert re.fullmatch(r"[\d.]+ KiB", cells["size"]), cells
    assert re.fullmatch(r"\d+ s|\d+ min \d+ s", cells["duration"]), cells
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+", cells["created"]), cells
    assert badge.value_of_css_property("background-color") == "rgba(31, 157, 85, 1)"
    browser.save_screenshot(str(ARTIFACTS / "dashboard-jobs.png"))
    assert (ARTIFACTS / "dashboard-job.png").stat().st_size > 10_000

    # a second job learns from the first one's student, chosen among the tenant's
    # trained students and uploads, with augmentation, a schedule and exports
    browser.get(url + "/#/new")
    wait_for(browser, "#new-job-form")
    source = Select(browser.find_element(By.ID, "teacher_source"))
    labels = [o.text for o in source.options]
    assert any(job_id in label and "browser-kd: mlp_small" in label for label in labels), labels
    assert any("teacher.safetensors" in label for label in labels), labels
    artifacts = httpx.get(
        f"{url}/v1/jobs/{job_id}/artifacts", headers={"Authorization": f"Bearer {key}"}
    ).json()
    weights = next(a["id"] for a in artifacts if a["name"] == "student.safetensors")
    source.select_by_value(weights)
    # the job's student brings its architecture along
    assert Select(browser.find_element(By.ID, "teacher_arch")).first_selected_option.text == (
        "mlp_small"
    )
    set_value(browser, "name", "from-a-trained-student")
    Select(browser.find_element(By.ID, "student_arch")).select_by_value("small_cnn")
    set_value(browser, "image_size", "8")
    set_value(browser, "epochs", "1")
    Select(browser.find_element(By.ID, "schedule")).select_by_value("step")
    set_value(browser, "crop_padding", "1")
    browser.find_element(By.ID, "hflip").click()
    browser.find_element(By.ID, "export_onnx").click()
    assert not browser.find_element(By.ID, "export_safetensors").is_enabled()
    browser.save_screenshot(str(ARTIFACTS / "dashboard-new-job.png"))
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 20).until(lambda d: "#/jobs/job_" in d.current_url)
    second = httpx.get(
        f"{url}/v1/jobs/{browser.current_url.rsplit('/', 1)[1]}",
        headers={"Authorization": f"Bearer {key}"},
    ).json()
    spec = second["spec"]
    assert spec["teacher"] == {**spec["teacher"], "arch": "mlp_small", "checkpoint": weights}
    assert spec["augment"] | {"crop_padding": 1, "hflip": True} == spec["augment"]
    assert spec["training"]["schedule"] == "step"
    assert sorted(spec["export"]) == ["onnx", "safetensors"]

    # a job with a readiness gate (set through the API): the page shows the verdict,
    # each check, and teacher and student accuracy per class as bars
    auth = {"Authorization": f"Bearer {key}"}
    gated = httpx.get(f"{url}/v1/jobs/{job_id}", headers=auth).json()["spec"]
    gated.update(name="gated", baseline=False)
    gated["training"]["epochs"] = 1
    gated["gate"] = {"max_latency_ms_batch1": 1e-9, "min_agreement": 0.0}  # one must fail
    gated_id = httpx.post(f"{url}/v1/jobs", json=gated, headers=auth).json()["id"]
    browser.get(f"{url}/#/jobs/{gated_id}")
    WebDriverWait(browser, 240).until(lambda d: d.find_elements(By.ID, "gate-verdict"))
    assert browser.find_element(By.ID, "gate-verdict").text == "Gate: failed"
    checks = attribute(browser, "#gate-table", "innerText")
    assert "latency_ms_batch1" in checks and "FAIL" in checks and "agreement" in checks
    bars = browser.find_elements(By.CSS_SELECTOR, "#per-class tr")
    assert len(bars) == 10  # digits: one row per class, teacher and student bars
    assert len(browser.find_elements(By.CSS_SELECTOR, "#per-class .bar > div.student")) == 10
    browser.save_screenshot(str(ARTIFACTS / "dashboard-gate.png"))

    # log out: back to the login form, the header's links hidden again
    browser.find_element(By.ID, "logout").click()
    wait_for(browser, "#login-form")
    assert not browser.find_element(By.ID, "logout").is_displayed()


def test_a_sweep_page_shows_its_trials_front_exports_and_curves(
    server: tuple[str, str], browser: WebDriver, tmp_path: Path
) -> None:
    """A grid of three students, one excluded by its size: the trial table marks the
    selected and the excluded trials, the Pareto plot has a point per trained trial,
    the export table lists every format, and each trained trial has its own curve."""
    url, key = server
    auth = {"Authorization": f"Bearer {key}"}
    kdcore.train(
        {
            "name": "sweep-teacher",
            "kind": "train",
            "student": {"arch": "small_cnn"},
            "dataset": {"builtin": "digits", "image_size": 8},
            "training": {"epochs": 3, "batch_size": 32, "precision": "fp32"},
        },
        tmp_path / "teacher",
    )
    weights = (tmp_path / "teacher" / "student.safetensors").read_bytes()
    up = upload(url, key, "sweep-teacher.safetensors", weights, "checkpoint")
    spec = {
        "name": "sweep-page",
        "kind": "distill",
        "teacher": {"arch": "small_cnn", "checkpoint": up.json()["id"]},
        "student": {"arch": "mlp_small"},
        "dataset": {"builtin": "digits", "image_size": 8, "val_fraction": 0.1},
        "training": {"epochs": 2, "batch_size": 64, "precision": "fp32"},
        "sweep": {
            "parameters": {"student.arch": ["mlp_small", "small_cnn", "cifar_resnet8"]},
            "strategy": "grid",
            "constraints": {"max_parameters": 60000},
        },
        "export": ["safetensors", "onnx", "onnx_int8"],
    }
    job = httpx.post(f"{url}/v1/jobs", json=spec, headers=auth)
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    browser.get(url + "/")
    wait_for(browser, "#login-form")
    set_value(browser, "api-key", key)
    browser.find_element(By.ID, "login").click()
    wait_for(browser, "#jobs-body")
    browser.get(f"{url}/#/jobs/{job_id}")
    WebDriverWait(browser, 300).until(lambda d: d.find_elements(By.ID, "trial-table"))
    sweep = httpx.get(f"{url}/v1/jobs/{job_id}", headers=auth).json()["report"]["sweep"]
    trained = [t["trial"] for t in sweep["trials"] if t["status"] == "trained"]
    excluded = [t["trial"] for t in sweep["trials"] if t["status"] == "excluded"]
    assert len(trained) == 2 and len(excluded) == 1, sweep["trials"]

    rows = browser.find_elements(By.CSS_SELECTOR, "#trial-table tbody tr")
    assert len(rows) == 3
    selected = browser.find_elements(By.CSS_SELECTOR, "#trial-table tr.selected")
    assert [r.get_attribute("data-trial") for r in selected] == [str(sweep["best"])]
    assert "selected" in selected[0].text
    gone = browser.find_elements(By.CSS_SELECTOR, "#trial-table tr.excluded")
    assert [r.get_attribute("data-trial") for r in gone] == [str(excluded[0])]
    assert "excluded: parameters" in gone[0].text
    points = browser.execute_script(
        "return [...document.querySelectorAll('#pareto-chart circle.trial-point')]"
        ".map(c => [c.dataset.trial, c.classList.contains('selected')])"
    )
    assert sorted(int(t) for t, _ in points) == sorted(trained)
    assert [t for t, chosen in points if chosen] == [str(sweep["best"])]
    formats = [
        r.get_attribute("data-format")
        for r in browser.find_elements(By.CSS_SELECTOR, "#export-table tbody tr")
    ]
    assert formats == ["onnx", "onnx_int8"], formats
    # one curve per trained trial (epochs 1..2 each, never one zig-zag line); the
    # selected one drawn fully, the others faint
    WebDriverWait(browser, 20).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#accuracy-chart path.series")) == 2
    )
    curves = browser.execute_script(
        "return [...document.querySelectorAll('#accuracy-chart path.series')]"
        ".map(p => [p.dataset.series, p.classList.contains('faint')])"
    )
    assert sorted(curves) == sorted(
        [
            [f"trial {t}" + (" (selected)" if t == sweep["best"] else ""), t != sweep["best"]]
            for t in trained
        ]
    ), curves
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "dashboard-sweep.png"))
    browser.find_element(By.ID, "logout").click()  # the next test logs in afresh
    wait_for(browser, "#login-form")


def test_a_language_model_job_page_shows_perplexity(
    server: tuple[str, str], browser: WebDriver, tmp_path: Path
) -> None:
    from tests.support.text import GPT2_STUDENT, write_corpus

    url, key = server
    auth = {"Authorization": f"Bearer {key}"}
    corpus = write_corpus(tmp_path / "corpus.txt", documents=60)
    up = upload(url, key, "corpus.txt", corpus.read_bytes(), "dataset")
    spec = {
        "name": "tiny-lm",
        "kind": "train",
        "task": "causal_lm",
        "student": {"arch": "hf:GPT2LMHeadModel", "config": GPT2_STUDENT},
        "dataset": {"name": "text", "path": up.json()["id"], "seq_len": 32},
        "training": {"epochs": 2, "batch_size": 8},
    }
    job = httpx.post(f"{url}/v1/jobs", json=spec, headers=auth)
    assert job.status_code == 201, job.text
    browser.get(url + "/")
    wait_for(browser, "#login-form")
    set_value(browser, "api-key", key)
    browser.find_element(By.ID, "login").click()
    wait_for(browser, "#jobs-body")
    browser.get(f"{url}/#/jobs/{job.json()['id']}")
    WebDriverWait(browser, 240).until(
        lambda d: "perplexity" in attribute(d, "#report", "innerText").lower()
    )
    report = attribute(browser, "#report-table", "innerText").lower()
    assert "perplexity" in report and "tokens/s" in report and "mse" not in report
    assert "tokens/s on cpu" in attribute(browser, "#report", "innerText")
    progress = attribute(browser, "#progress-text", "innerText")
    assert "tokens/s" in progress and "img/s" not in progress
    title = browser.execute_script(
        "return document.querySelector('#accuracy-chart svg text').textContent"
    )
    assert title == "Validation perplexity"
    series = browser.execute_script(
        "return [...document.querySelectorAll('#accuracy-chart path.series')].length"
    )
    assert series == 1  # the student's perplexity, epoch by epoch
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "dashboard-language-model.png"))


def log_in(browser: WebDriver, url: str, key: str) -> None:
    """Open the dashboard logged in (with `key`, unless a session already is)."""
    browser.get(url + "/")
    WebDriverWait(browser, 30).until(
        lambda d: d.find_elements(By.ID, "login-form") or d.find_elements(By.ID, "jobs-body")
    )
    if browser.find_elements(By.ID, "login-form"):
        set_value(browser, "api-key", key)
        browser.find_element(By.ID, "login").click()
        wait_for(browser, "#jobs-body")


def test_the_form_fits_1280_px_and_searches_architectures(
    server: tuple[str, str], browser: WebDriver
) -> None:
    url, key = server
    # a checkpoint with a long name: its option is the widest thing the form holds
    weights = save(build_model("mlp_small", 10, (1, 8, 8)).state_dict())
    upload(
        url, key, "a-teacher-checkpoint-with-a-rather-long-name.safetensors", weights, "checkpoint"
    )
    browser.set_window_size(1280, 900)
    try:
        log_in(browser, url, key)
        browser.get(url + "/#/new")
        wait_for(browser, "#new-job-form")
        outside = browser.execute_script(
            "const form = document.getElementById('new-job-form');"
            "const box = form.getBoundingClientRect();"
            "const inner = box.right - parseFloat(getComputedStyle(form).paddingRight);"
            "return [...document.querySelectorAll('#new-job-form *')]"
            ".filter(el => el.offsetParent !== null"
            "  && el.getBoundingClientRect().right > inner + 0.5)"
            ".map(el => el.id || el.tagName)"
        )
        assert outside == []  # nothing sticks out of the card's content box
        assert browser.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth"
        )
        student = Select(browser.find_element(By.ID, "student_arch"))
        total = len(student.options)
        assert total > 100  # the registry, timm's and transformers' classes
        set_value(browser, "student_arch_search", "resnet-20")
        visible = browser.execute_script(
            "return [...document.getElementById('student_arch').options]"
            ".filter(o => !o.hidden).map(o => o.value)"
        )
        assert "cifar_resnet20" in visible and len(visible) < 20, visible
        assert student.first_selected_option.get_attribute("value") in visible
        count = browser.find_element(By.ID, "student_arch_count").text
        assert count == f"{len(visible)} of {total} match"
        set_value(browser, "student_arch_search", "")
        browser.find_element(By.ID, "student_arch_search").send_keys(" ")  # an input event
        hidden = browser.execute_script(
            "return [...document.getElementById('student_arch').options]"
            ".filter(o => o.hidden).length"
        )
        assert hidden == 0
        # the page names its icon, and what a browser asks for first is there too
        icon = browser.find_element(By.CSS_SELECTOR, "link[rel=icon]").get_attribute("href")
        for path in (icon, url + "/favicon.ico"):
            got = httpx.get(path)
            assert got.status_code == 200 and got.headers["content-type"].startswith("image/svg")
    finally:
        browser.set_window_size(1400, 1100)


def test_the_api_explorer_renders_from_local_files_under_the_policy(
    server: tuple[str, str], browser: WebDriver
) -> None:
    """/docs in a real browser: Swagger UI from the service's own files draws the API
    (its title and the job routes) with the strict Content-Security-Policy, and the
    browser reports no refused resource."""
    url, _ = server
    browser.get(url + "/docs")
    WebDriverWait(browser, 30).until(
        lambda d: "kdservice" in d.find_element(By.CSS_SELECTOR, ".swagger-ui .info .title").text
    )
    WebDriverWait(browser, 30).until(lambda d: "/v1/jobs" in d.page_source)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "api-explorer.png"))
    refused = [
        entry["message"]
        for entry in browser.get_log("browser")
        if "Content Security Policy" in entry["message"] or "Refused" in entry["message"]
    ]
    assert refused == []


def test_a_multi_host_job_page_shows_its_hosts_throughput_and_a_lost_host(
    server: tuple[str, str], browser: WebDriver
) -> None:
    """The events a multi-host job's workers record (tests/faults/test_multi_host.py
    makes them for real), written here as a worker writes them: the page draws them."""
    from app.db import repository
    from app.db.session import session_scope

    url, key = server
    auth = {"Authorization": f"Bearer {key}"}
    spec = {
        "name": "tiny",
        "kind": "train",
        "student": {"arch": "mlp_small"},
        "dataset": {"builtin": "synthetic", "num_samples": 64, "num_classes": 2},
    }
    job = httpx.post(f"{url}/v1/jobs", json=spec, headers=auth).json()
    placed = {
        "attempt": 2,
        "rendezvous": "10.0.0.1:29400",
        "hosts": [
            {"node_rank": 0, "host": "10.0.0.1", "ranks": [0]},
            {"node_rank": 1, "host": "10.0.0.3", "ranks": [1]},
        ],
    }
    with session_scope(f"sqlite:///{DATA_DIRS[url] / 'kdservice.db'}") as session:
        repository.append_event(
            session, job["id"], "node_lost", {"attempt": 1, "host": "10.0.0.2", "node_rank": 1}
        )
        repository.append_event(session, job["id"], "hosts", placed)
        for host in ("10.0.0.1", "10.0.0.3"):
            rate = {"node_rank": 0, "host": host, "epoch": 3, "rate": 640.0, "unit": "images/s"}
            repository.append_event(session, job["id"], "host", rate)
    log_in(browser, url, key)
    browser.get(f"{url}/#/jobs/{job['id']}")
    wait_for(browser, "#host-table")
    WebDriverWait(browser, 30).until(
        lambda d: "10.0.0.3" in attribute(d, "#host-table", "innerText")
    )
    table = attribute(browser, "#host-table", "innerText")
    assert "640 images/s (epoch 3)" in table and "10.0.0.1" in table
    assert "rendezvous 10.0.0.1:29400" in attribute(browser, "#hosts", "innerText")
    assert "node 1 (10.0.0.2) lost" in attribute(browser, "#lost-hosts", "innerText")
