"""The console of a real daemon on the Asterisk lab, in headless Chromium: a caller abandons the queue
and the request appears on the live page, with the operators' state from AMI, without a reload."""

from __future__ import annotations

import asyncio
import socket

import pytest
from browserkit import chromium_driver, shot
from labdaemon import lab_config
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from callbackd.adapters.console.auth import hash_password

pytestmark = pytest.mark.lab
TOKEN = "lab-http-token-0123456789"
PASSWORD = "correct horse battery"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def paused(lab):
    """Operators paused in support: the abandoned caller is not called back while the page watches."""
    lab.operator("op1,op2", "answer")
    lab.pstn("--reset")
    for op in ("op1", "op2"):
        lab.run("cli", f"queue pause member PJSIP/{op} queue support")
    yield
    for op in ("op1", "op2"):
        lab.run("cli", f"queue unpause member PJSIP/{op} queue support")


async def test_an_abandon_on_the_lab_appears_live(lab, paused, daemon_factory, tmp_path):
    port = free_port()
    extra = f"""
[http]
enabled = true
host = "127.0.0.1"
port = {port}
token = "{TOKEN}"

[console]
enabled = true
language = "ru"

[[console.accounts]]
name = "anna"
password_hash = "{hash_password(PASSWORD)}"
role = "operator"
"""
    daemon = daemon_factory(lab_config(tmp_path, extra=extra))
    await asyncio.to_thread(daemon.wait_for, "http.listening", 30)
    driver = await asyncio.to_thread(chromium_driver, tmp_path / "profile")
    try:
        wait = WebDriverWait(driver, 30)
        run = asyncio.to_thread
        await run(driver.get, f"http://127.0.0.1:{port}/console/login")
        await run(lambda: driver.find_element(By.ID, "account").send_keys("anna"))
        await run(lambda: driver.find_element(By.ID, "password").send_keys(PASSWORD))
        await run(lambda: driver.find_element(By.ID, "submit").click())
        await run(wait.until, ec.presence_of_element_located((By.ID, "open-count")))
        await run(wait.until, ec.text_to_be_present_in_element((By.ID, "operators"), "на паузе"))  # from AMI
        await run(lab.call, "2025550141", 7)  # waits 7 s in the support queue, then hangs up
        await run(daemon.wait_for, "request.stored", 20, number="+12025550141")
        await run(wait.until, ec.text_to_be_present_in_element((By.ID, "open"), "+12025550141"))
        assert driver.find_element(By.ID, "open-count").text == "1"
        row = driver.find_element(By.CSS_SELECTOR, "#open tbody tr").text
        whys = ("ждёт свободного оператора", "лестница повторов", "вне рабочего времени", "в выбранное время")
        assert any(w in row for w in whys), row  # why it is not being dialled, in the account's language
        await run(shot, driver, "live-lab")
    finally:
        await asyncio.to_thread(driver.quit)
