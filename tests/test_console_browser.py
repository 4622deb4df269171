"""The browser console in real headless Chromium: WebRTC call, first-audio figures, REST download."""

from __future__ import annotations

import shutil

import pytest
from playwright.sync_api import sync_playwright

from support.servers import ServerThread

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required",
]  # fmt: skip


@pytest.fixture(scope="module")
def page(gateway: ServerThread):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page()
        page.goto(gateway.url + "/console")
        page.wait_for_function("document.getElementById('status').textContent === 'ok'")
        yield page
        browser.close()


def test_console_speaks_over_webrtc_and_shows_first_audio(page) -> None:
    assert page.locator("#voice option").all_inner_texts()[0] == "joe"
    page.click("#connect")
    page.wait_for_function("window.consoleState.sessionId !== null", timeout=20000)
    page.fill("#text", "Hello from the browser console. This sentence should reach the speakers.")
    page.click("#speak")
    page.wait_for_function("window.consoleState.firstAudioMs !== null", timeout=20000)
    assert page.inner_text("#ttfa").endswith("ms")
    page.wait_for_function("window.consoleState.heardMs !== null", timeout=20000)
    page.wait_for_function("window.consoleState.events.some(e => e.type === 'utterance.done')", timeout=30000)
    page.wait_for_timeout(1000)
    stats = page.evaluate("window.consoleState.stats")
    assert stats["packetsReceived"] > 100
    assert stats["packetsLost"] == 0
    heard = page.evaluate("window.consoleState.heardMs")
    assert 0 < heard < 2000, f"the page heard the speech {heard} ms after sending the text"
    kinds = [event["type"] for event in page.evaluate("window.consoleState.events")]
    assert kinds[0] == "session.created" and "utterance.first_audio" in kinds


def test_console_interrupts(page) -> None:
    page.fill("#text", " ".join(["This is a long answer that the caller will interrupt."] * 5))
    page.click("#speak")
    page.wait_for_function("window.consoleState.events.filter(e => e.type === 'utterance.first_audio').length >= 2")
    page.click("#interrupt")
    page.wait_for_function("window.consoleState.events.some(e => e.type === 'utterance.cancelled')", timeout=10000)


def test_console_rest_synthesis_offers_a_download(page) -> None:
    page.select_option("#format", "wav")
    page.click("#rest")
    page.wait_for_function("document.getElementById('restinfo').textContent.includes('bytes')", timeout=30000)
    assert page.get_attribute("#download", "download") == "speech.wav"
    duration = page.evaluate(
        "new Promise(r => { const a = document.getElementById('restplayer');"
        " if (a.readyState >= 1) r(a.duration); else a.onloadedmetadata = () => r(a.duration); })"
    )
    assert 1.5 < duration < 15
