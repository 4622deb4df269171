"""The browser console in real headless Chromium: an audible WHEP call, first-audio figures, errors, REST playback."""

from __future__ import annotations

import shutil

import pytest
from playwright.sync_api import sync_playwright

from support.servers import ServerThread
from support.waiting import wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required",
]  # fmt: skip
# The page's live setInterval timers, counted (a stats timer left running per reconnect piles up).
COUNT_INTERVALS = """
(() => {
  const live = new Set(), set = window.setInterval.bind(window), clear = window.clearInterval.bind(window);
  window.setInterval = (...args) => { const id = set(...args); live.add(id); return id; };
  window.clearInterval = (id) => { live.delete(id); clear(id); };
  window.liveIntervals = () => live.size;
})();
"""
# What a listener hears: the element that holds the call's live stream, unmuted, with volume, playing.
PLAYER = """
(() => {
  const player = document.getElementById('player'), stream = player.srcObject;
  const live = stream ? stream.getAudioTracks().filter((track) => track.readyState === 'live').length : 0;
  return { live, muted: player.muted, volume: player.volume, paused: player.paused, time: player.currentTime };
})()
"""


@pytest.fixture(scope="module")
def page(gateway: ServerThread):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page()
        page.add_init_script(COUNT_INTERVALS)
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


def test_console_call_is_audible(page) -> None:
    before = page.evaluate(PLAYER)
    assert before["live"] == 1, "the player holds the call's live audio track"
    assert not before["muted"] and before["volume"] > 0 and not before["paused"], before
    page.wait_for_timeout(1000)
    after = page.evaluate(PLAYER)
    # 1 s of wall clock; a playing element's clock advances by about as much (at least half: a slow CI tick)
    assert after["time"] - before["time"] > 0.5, f"the player is not playing: {before} then {after}"


def test_console_interrupts(page) -> None:
    page.fill("#text", " ".join(["This is a long answer that the caller will interrupt."] * 5))
    page.click("#speak")
    page.wait_for_function("window.consoleState.events.filter(e => e.type === 'utterance.first_audio').length >= 2")
    page.click("#interrupt")
    page.wait_for_function("window.consoleState.events.some(e => e.type === 'utterance.cancelled')", timeout=10000)


def test_console_reconnects_with_fresh_figures_and_one_stats_timer(page, gateway: ServerThread) -> None:
    first_session = page.evaluate("window.consoleState.sessionId")
    assert page.evaluate("window.liveIntervals()") == 1
    page.click("#hangup")
    page.wait_for_function("!document.getElementById('connect').disabled")
    wait_until(lambda: gateway.app.state.sessions.get(first_session) is None, 5, "hanging up ends the session")
    assert page.evaluate("window.liveIntervals()") == 0
    page.click("#connect")
    page.wait_for_function(f"![null, '{first_session}'].includes(window.consoleState.sessionId)", timeout=20000)
    assert page.evaluate("window.liveIntervals()") == 1
    state = page.evaluate("window.consoleState")
    assert state["firstAudioMs"] is None and state["heardMs"] is None
    assert page.inner_text("#ttfa") == "–" and page.inner_text("#heard") == "–"
    assert [event["type"] for event in state["events"]][0] == "session.created"


def test_console_checks_speed_and_shows_errors_plainly(page, gateway: ServerThread) -> None:
    page.fill("#speed", "9")
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.click("#speak")
    page.wait_for_function("window.consoleState.error !== ''")
    assert page.is_visible("#error")
    assert "Speed must be a number from 0.25 to 4" in page.inner_text("#error")
    page.click("#rest")
    page.wait_for_timeout(300)
    assert not [url for url in requests if "/v1/" in url], "a bad speed is not sent"
    page.fill("#speed", "1")
    # a voice the gateway does not have: its error is one readable line, not the JSON body
    page.evaluate("document.getElementById('voice').add(new Option('nobody', 'nobody', true, true))")
    page.click("#rest")
    page.wait_for_function("window.consoleState.error.startsWith('Synthesis failed')", timeout=10000)
    error = page.inner_text("#error")
    assert error == "Synthesis failed: 400: voice 'nobody' does not exist; see GET /v1/audio/voices", error
    page.evaluate("document.getElementById('voice').remove(document.getElementById('voice').selectedIndex)")
    page.click("#speak")
    page.wait_for_function("window.consoleState.error === ''")
    assert not page.is_visible("#error")


def test_console_plays_pcm_from_the_rest_route(page) -> None:
    page.select_option("#format", "pcm")
    page.click("#rest")
    page.wait_for_function("document.getElementById('restinfo').textContent.includes('bytes')", timeout=30000)
    assert page.get_attribute("#download", "download") == "speech.pcm"
    playable = page.evaluate(
        "new Promise(r => { const a = document.getElementById('restplayer');"
        " const done = () => r({ duration: a.duration, error: a.error && a.error.code });"
        " if (a.readyState >= 1 || a.error) done(); else { a.onloadedmetadata = done; a.onerror = done; } })"
    )
    assert playable["error"] is None and 1.5 < playable["duration"] < 15, playable


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
