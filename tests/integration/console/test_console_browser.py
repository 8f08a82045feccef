"""The console in a real browser (Debian's chromium, driven by Selenium), against the real
stack: the list fills, a filter narrows it, a start by message shows live, the instance page
shows its timeline, buttons act (and the status topic shows it), a bulk purge removes only
what it should, a viewer cannot act. Screenshots of the list and an instance page go to
``CONSOLE_SCREENSHOT_DIR`` when set (docs/console's come from here)."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Observer, unique
from tests.integration.console.conftest import OPERATOR_TOKEN, VIEWER_TOKEN, ConsoleWorker

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
    if os.environ.get("CI"):
        raise RuntimeError(
            "chromium and chromium-driver are missing: scripts/setup.sh installs them"
        )
    pytest.skip(
        "chromium/chromium-driver missing (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )

# Selenium must never fetch a driver or report usage: the browser and driver are Debian's.
os.environ.setdefault("SE_OFFLINE", "true")
os.environ.setdefault("SE_AVOID_STATS", "true")

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import (  # noqa: E402
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1440,1000",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait(
    driver: WebDriver, what: str, check: Callable[[WebDriver], Any], timeout: float = 30
) -> Any:
    try:
        # The live list re-renders rows as status events arrive: an element read a moment
        # ago may be gone; look again rather than fail.
        return WebDriverWait(
            driver,
            timeout,
            poll_frequency=0.1,
            ignored_exceptions=(StaleElementReferenceException,),
        ).until(check)
    except TimeoutException:
        shown = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".flash, .job")]
        logs = [e.get("message") for e in driver.get_log("browser")][-10:]  # type: ignore[attr-defined]
        logs += driver.execute_script(
            "return performance.getEntriesByType('resource').slice(-8)"
            ".map(e => e.name + ' ' + Math.round(e.duration))"
        )
        raise AssertionError(
            f"timed out waiting for {what}; the page shows {shown}; its console: {logs}"
        ) from None


def rows(driver: WebDriver) -> list[str]:
    return [
        str(r.get_attribute("data-instance"))
        for r in driver.find_elements(By.CSS_SELECTOR, "#instance-table tbody tr[data-instance]")
    ]


def sign_in(driver: WebDriver, console: ConsoleWorker, token: str, path: str = "/") -> None:
    driver.delete_all_cookies()
    separator = "&" if "?" in path else "?"
    driver.get(f"{console.url}{path}{separator}token={token}")
    assert "token=" not in driver.current_url  # taken out of the address at once


def screenshot(driver: WebDriver, name: str, tmp_path: Path, height: int = 1000) -> None:
    driver.set_window_size(1440, height)
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.3)
    driver.save_screenshot(str(tmp_path / name))
    driver.set_window_size(1440, 1000)
    wanted = os.environ.get("CONSOLE_SCREENSHOT_DIR")
    if wanted:
        Path(wanted).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / name, Path(wanted) / name)


def test_the_list_fills_and_a_filter_narrows_it(
    browser: WebDriver, console: ConsoleWorker, tmp_path: Path
) -> None:
    tag = f"order-{uuid.uuid4().hex[:5]}"
    done = [f"{tag}-paid-{n}" for n in range(3)]
    waiting = [f"{tag}-open-{n}" for n in range(2)]
    for instance_id in done:
        console.start("greeting_workflow", instance_id, "customer")
    for instance_id in waiting:
        console.start("approval_workflow", instance_id, {"order_id": instance_id, "amount": 5000})
    for instance_id in done:
        console.wait_listed(instance_id, "COMPLETED")
    sign_in(browser, console, OPERATOR_TOKEN)
    wait(browser, "the list to fill", lambda d: set(done + waiting) <= set(rows(d)))

    browser.find_element(By.ID, "f-q").send_keys(tag)
    Select(browser.find_element(By.ID, "f-workflow")).select_by_value("approval_workflow")
    browser.find_element(By.ID, "apply").click()
    wait(browser, "the filter to narrow the list", lambda d: sorted(rows(d)) == sorted(waiting))
    counts = browser.find_element(By.CSS_SELECTOR, '#counts [data-status="RUNNING"] b').text
    assert counts == "2"
    browser.get(f"{console.url}/?q={tag}")
    wait(browser, "the tagged instances", lambda d: set(rows(d)) == set(done + waiting))
    screenshot(browser, "console-list.png", tmp_path, height=700)


def test_an_instance_started_by_a_message_appears_live(
    browser: WebDriver, console: ConsoleWorker, observer: Observer
) -> None:
    instance_id = unique("live")
    sign_in(browser, console, OPERATOR_TOKEN, "/?q=live-")
    wait(
        browser,
        "the live stream",
        lambda d: "on" in str(d.find_element(By.ID, "live").get_attribute("class")),
    )
    browser.execute_script("window.notReloaded = true")
    observer.publish(
        console.topic("start"), {"workflow": "waiting_workflow", "instance_id": instance_id}
    )
    wait(browser, "the new instance in the list", lambda d: instance_id in rows(d))
    assert browser.execute_script("return window.notReloaded") is True


def test_the_instance_page_timeline_and_its_buttons(
    browser: WebDriver, console: ConsoleWorker, observer: Observer, tmp_path: Path
) -> None:
    instance_id = unique("order")
    console.start("approval_workflow", instance_id, {"order_id": instance_id, "amount": 5000})
    console.wait_listed(instance_id, "RUNNING")
    sign_in(browser, console, OPERATOR_TOKEN, f"/instances/{instance_id}")
    assert browser.find_element(By.ID, "status").text == "RUNNING"
    assert "waiting for approval" in browser.find_element(By.ID, "custom-status").text

    browser.find_element(By.ID, "suspend-reason").send_keys("peak hours")
    browser.find_element(By.ID, "suspend").click()
    wait(
        browser,
        "the suspend outcome",
        lambda d: d.find_elements(By.CSS_SELECTOR, "#action-result .flash.ok"),
    )
    suspended = observer.wait_for(
        "suspended on the status topic",
        lambda: [
            r
            for r in observer.for_instance(instance_id, "console.workflow.status")
            if r.data["event"] == "suspended"
        ],
    )[0]
    assert suspended.data["reason"] == "peak hours" and suspended.data["correlation_id"]
    wait(
        browser,
        "the page to show SUSPENDED",
        lambda d: d.find_element(By.ID, "status").text == "SUSPENDED",
    )

    browser.find_element(By.ID, "resume").click()
    wait(
        browser,
        "the page to show RUNNING",
        lambda d: d.find_element(By.ID, "status").text == "RUNNING",
    )
    browser.find_element(By.ID, "approve").click()
    wait(
        browser,
        "the page to show COMPLETED",
        lambda d: d.find_element(By.ID, "status").text == "COMPLETED",
        60,
    )
    wait(
        browser,
        "the activity in the timeline",
        lambda d: d.find_elements(
            By.CSS_SELECTOR, '#timeline tr[data-kind="activity"][data-name="process_order"]'
        ),
    )
    kinds = [
        e.get_attribute("data-kind")
        for e in browser.find_elements(By.CSS_SELECTOR, "#timeline tr[data-kind]")
    ]
    assert {"run", "timer", "event_raised", "suspended", "resumed", "activity"} <= set(kinds)
    events = [
        e.get_attribute("data-event")
        for e in browser.find_elements(By.CSS_SELECTOR, "#status-events li[data-event]")
    ]
    assert events[:1] == ["started"] and "suspended" in events and "completed" in events
    screenshot(browser, "console-instance.png", tmp_path, height=1500)

    browser.find_element(By.ID, "resume").click()  # a state that forbids it: said in the page
    refusal = wait(
        browser,
        "the refusal",
        lambda d: d.find_elements(By.CSS_SELECTOR, "#action-result .flash.bad"),
    )
    assert "only a suspended instance can be resumed" in refusal[0].text


def test_start_checks_the_json_before_sending(browser: WebDriver, console: ConsoleWorker) -> None:
    sign_in(browser, console, OPERATOR_TOKEN, "/start")
    Select(browser.find_element(By.ID, "start-workflow")).select_by_value("greeting_workflow")
    instance_id = unique("form")
    browser.find_element(By.ID, "start-id").send_keys(instance_id)
    browser.find_element(By.ID, "start-input").send_keys('{"name": ')
    browser.find_element(By.ID, "start").click()
    invalid = wait(
        browser,
        "the JSON check",
        lambda d: d.find_elements(By.CSS_SELECTOR, '#start-result [data-outcome="invalid"]'),
    )
    assert "not valid JSON" in invalid[0].text
    time.sleep(0.5)
    assert console.worker.client.get_workflow_state(instance_id) is None  # nothing was sent
    field = browser.find_element(By.ID, "start-input")
    field.clear()
    field.send_keys('"ana"')
    browser.find_element(By.ID, "start").click()
    done = wait(
        browser, "the start", lambda d: d.find_elements(By.CSS_SELECTOR, "#start-result .flash.ok")
    )
    assert instance_id in done[0].text
    console.worker.wait_status(instance_id, {"COMPLETED"})


def test_bulk_purge_removes_only_what_it_should(browser: WebDriver, console: ConsoleWorker) -> None:
    tag = f"purge-{uuid.uuid4().hex[:5]}"
    done, running, other = console.purge_candidates(tag)
    sign_in(browser, console, OPERATOR_TOKEN, f"/?q={tag}")
    wait(browser, "the list", lambda d: set(rows(d)) == {*done, running})
    browser.find_element(By.ID, "bulk-purge").click()
    confirm = wait(browser, "the confirmation", lambda d: d.find_elements(By.ID, "confirm-bulk"))
    assert "Purge 3 instance(s)?" in browser.find_element(By.ID, "bulk-result").text
    assert all(console.worker.client.get_workflow_state(i) is not None for i in done)  # not yet
    confirm[0].click()
    report = wait(browser, "the report", lambda d: d.find_elements(By.ID, "job-report"), 60)
    assert report[0].text.strip() == "done: 3"
    wait(browser, "the list to drop the purged", lambda d: rows(d) == [running])
    assert all(console.worker.client.get_workflow_state(i) is None for i in done)
    assert console.worker.client.get_workflow_state(running) is not None
    assert console.worker.client.get_workflow_state(other) is not None


def test_a_viewer_cannot_act(browser: WebDriver, console: ConsoleWorker) -> None:
    instance_id = unique("viewed")
    console.start("waiting_workflow", instance_id)
    console.wait_listed(instance_id, "RUNNING")
    sign_in(browser, console, VIEWER_TOKEN, f"/instances/{instance_id}")
    assert browser.find_element(By.ID, "status").text == "RUNNING"
    assert not browser.find_elements(By.ID, "actions")
    browser.get(f"{console.url}/")
    assert not browser.find_elements(By.ID, "bulk")
    # Even with the page's own CSRF token, the server refuses a viewer's action.
    status = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const csrf = JSON.parse(document.body.getAttribute("hx-headers"))["X-CSRF-Token"];
        fetch("/ui/instances/" + arguments[0] + "/suspend", {method: "POST",
              headers: {"X-CSRF-Token": csrf}}).then(r => done(r.status));
        """,
        instance_id,
    )
    assert status == 403
    assert console.worker.wait_status(instance_id, {"RUNNING"})
