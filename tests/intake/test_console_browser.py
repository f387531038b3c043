"""The console in a real headless Chromium (Debian's chromium and chromedriver, driven by selenium):
sign in, watch a missed call appear live, cancel a request, schedule one, and check the figures and
the chart against ``callbackd report``. Screenshots are kept in test-artifacts/console/."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from browserkit import chromium_driver, shot
from leadkit import RULES, TOKEN
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from callbackd import cli
from callbackd.adapters import console, db
from callbackd.adapters import models as m
from callbackd.adapters.console.auth import Account, Auth, hash_password
from callbackd.adapters.http import HttpServer, build_app
from callbackd.adapters.reports import CsvOptions, ReportSettings
from callbackd.domain.intake import Contact, Source
from callbackd.domain.metrics import Thresholds

MSK = ZoneInfo("Europe/Moscow")
PASSWORD = "correct horse battery"


@pytest.fixture
async def served(submit, lead_store, sqlite_url):
    settings = ReportSettings(tz=MSK, thresholds=Thresholds(), csv=CsvOptions())
    auth = Auth([Account("anna", hash_password(PASSWORD), "admin")])
    app = build_app(submit, TOKEN, RULES)
    pages = console.router(
        lead_store, auth, db_url=sqlite_url, settings=lambda: settings, intake=console.submitter(submit)
    )
    console.install(app, pages)
    server = HttpServer(app, "127.0.0.1", 0)
    await server.start()
    yield f"http://127.0.0.1:{server.port}"
    await server.stop()


@pytest.fixture
def browser(tmp_path):
    driver = chromium_driver(tmp_path / "profile")
    yield driver
    driver.quit()


async def seed_calls(engine) -> None:
    """Calls of today in Moscow: answered and missed in two hours, so the figures are not trivial."""
    day = datetime.now(MSK).replace(hour=9, minute=0, second=0, microsecond=0)
    rows = []
    for i, (hour, answered, wait) in enumerate([(9, True, 5), (9, False, 40), (9, False, 30), (10, True, 12),
                                                 (10, True, 8), (10, False, 60), (11, True, 3)]):  # fmt: skip
        start = (day + timedelta(hours=hour - 9, minutes=i)).astimezone(UTC)
        rows.append(
            m.Call(
                linkedid=f"17000000{i}.{i}",
                number=f"+1202555040{i}",
                queue="support",
                started_at=start,
                joined_at=start,
                answered_at=start + timedelta(seconds=wait) if answered else None,
                ended_at=start + timedelta(seconds=wait + 60),
                hold_time=wait,
                agent="op1" if answered else None,
                outcome="answered" if answered else "missed",
                miss_reason=None if answered else "queue_abandon",
                node="n1",
            )
        )
    async with db.sessionmaker(engine)() as s, s.begin():
        s.add_all(rows)


async def test_console_in_chromium(served, browser, submit, lead_store, sqlite_url, tmp_path, capsys):
    await seed_calls(lead_store.engine)
    wait = WebDriverWait(browser, 15)
    run = asyncio.to_thread  # selenium blocks; the server lives on this loop

    await run(browser.get, f"{served}/console/")
    await run(wait.until, ec.presence_of_element_located((By.ID, "account")))  # sent to the sign-in page
    await run(lambda: browser.find_element(By.ID, "account").send_keys("anna"))
    await run(lambda: browser.find_element(By.ID, "password").send_keys(PASSWORD))
    await run(lambda: browser.find_element(By.ID, "submit").click())
    await run(wait.until, ec.presence_of_element_located((By.ID, "open-count")))
    assert browser.find_element(By.ID, "open-count").text == "0"

    # A missed call arrives while the page is open: it appears without a reload.
    contact = Contact(
        source=Source.AMI,
        source_ref="1700000099.10",
        raw_number="2025550499",
        reason="queue_abandon",
        at=datetime.now(UTC),
        waited=45,
        caller_gave_up=True,
    )
    rid = (await submit(contact)).request_id
    row = f'#open tr[data-id="{rid}"]'
    await run(wait.until, ec.presence_of_element_located((By.CSS_SELECTOR, row)))
    assert browser.find_element(By.ID, "open-count").text == "1"
    assert "+12025550499" in browser.find_element(By.CSS_SELECTOR, row).text
    await run(shot, browser, "live")

    # Cancel it on its page.
    await run(lambda: browser.find_element(By.CSS_SELECTOR, f"{row} a").click())
    await run(wait.until, ec.presence_of_element_located((By.ID, "cancel")))
    await run(lambda: browser.find_element(By.ID, "cancel").click())
    await run(wait.until, ec.text_to_be_present_in_element((By.ID, "status"), "cancelled"))

    # Schedule it for tomorrow 10:30 Moscow time: reopened, due then.
    at = (datetime.now(MSK) + timedelta(days=1)).replace(hour=10, minute=30, second=0, microsecond=0)
    await run(
        browser.execute_script,
        "document.getElementById('at').value = arguments[0];",
        at.strftime("%Y-%m-%dT%H:%M"),
    )
    await run(lambda: browser.find_element(By.ID, "schedule").click())
    await run(wait.until, ec.text_to_be_present_in_element((By.ID, "status"), "open"))
    assert browser.find_element(By.ID, "due").text == at.strftime("%Y-%m-%d %H:%M:%S")
    timeline = browser.find_element(By.ID, "timeline").text
    assert "user:anna: cancel" in timeline and "user:anna: schedule" in timeline
    await run(shot, browser, "request")
    req, _, _ = await lead_store.get_request(rid)
    assert req.status == "open" and req.due_at == at.astimezone(UTC)

    # Figures and the chart against `callbackd report` for today.
    await run(browser.get, f"{served}/console/figures")
    await run(wait.until, ec.presence_of_element_located((By.ID, "figures")))
    shown = {
        e.get_attribute("data-figure"): e.text
        for e in browser.find_elements(By.CSS_SELECTOR, "[data-figure]")
    }
    bars = {
        (e.get_attribute("data-series"), e.get_attribute("data-label")): e.get_attribute("data-value")
        for e in browser.find_elements(By.CSS_SELECTOR, "#car-chart rect[data-series]")
    }
    await run(shot, browser, "figures")
    config = tmp_path / "c.toml"
    config.write_text(f'[database]\nurl = "{sqlite_url}"\n\n[reports]\ntimezone = "Europe/Moscow"\n')
    today = datetime.now(MSK).date()
    period = [
        "--from",
        today.isoformat(),
        "--to",
        (today + timedelta(days=1)).isoformat(),
        "--format",
        "json",
    ]
    capsys.readouterr()
    assert await run(cli.main, ["-c", str(config), "report", *period]) == 0
    total = json.loads(capsys.readouterr().out)["total"]
    assert total["offered"] == 7 and total["car_pct"] is not None
    for key, text in shown.items():
        want = total[key]
        assert text == ("—" if want is None else str(want)), key
    assert await run(cli.main, ["-c", str(config), "report", *period, "--by", "hour"]) == 0
    hours = json.loads(capsys.readouterr().out)["rows"]
    checked = 0
    for h in hours:
        for series, key in (("CAR", "car_pct"), ("net lost", "net_lost_rate_pct")):
            value = bars[(series, h["hour"])]
            if h[key] is None:
                assert value == "", (series, h["hour"])
            else:
                assert float(value) == pytest.approx(h[key], abs=0.01), (series, h["hour"])
                checked += 1
    assert checked >= 6  # three hours with calls, two series each
