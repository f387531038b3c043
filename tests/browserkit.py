"""Headless Chromium for the console's browser tests: Debian's chromium and chromedriver, a fresh profile."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "console"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
]


def chromium_driver(profile: Path) -> webdriver.Chrome:
    for binary in ("chromium", "chromedriver"):
        if shutil.which(binary) is None:
            pytest.fail(
                f"{binary} is missing: apt-get install chromium chromium-driver (tests/setup-services does)"
            )
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))


def shot(driver: webdriver.Chrome, name: str) -> None:
    """Kept as a test artifact in test-artifacts/console/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
