"""The chat page in a real (headless) Chromium: type, send, stream, memory update, reload keeps the session."""

import asyncio
import os
import shutil
import socket
import threading
from pathlib import Path

import pytest
import torch

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PAGE = Path(__file__).resolve().parents[2] / "rxnn_runtime" / "web" / "index.html"


def test_page_is_self_contained():
    html = PAGE.read_text(encoding="utf-8")
    for needle in ("<script src", "<link ", "http://", "https://", "@import"):
        assert needle not in html, f"the page must not load external resources ({needle!r})"
    for needle in ('id="reset"', 'id="cancel"', '<label for="input"', "localStorage", "/ws"):
        assert needle in html


def _require_browser():
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            pytest.skip(f"{path} is missing (install with scripts/ensure-system-deps.sh or apt-get install "
                        "chromium chromium-driver)")
    return pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")


class _Server:
    """create_app(reactive) served on 127.0.0.1:<free port> from a background thread with its own event loop."""

    def __init__(self, reactive) -> None:
        from aiohttp import web

        from rxnn_runtime.server.app import create_app

        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(create_app(reactive, heartbeat=None))
        self.port = 0
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def start() -> int:
            await self.runner.setup()
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            site = web.TCPSite(self.runner, "127.0.0.1", port)
            await site.start()
            return port

        self.port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(timeout=30)

    def close(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)


@pytest.fixture
def served(tmp_path):
    pytest.importorskip("rxnn_runtime.server.app", reason="rxnn_runtime.server.app is not in place yet")
    from rxnn_runtime.reactive_model import ReactiveModel
    from rxt.config import RxTConfig
    from rxt.model import RxT
    from rxt.tokenizer import RxTokenizer

    torch.manual_seed(0)
    tokenizer = RxTokenizer.default()
    model = RxT(RxTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, max_seq_len=128)).eval()
    reactive = ReactiveModel(model, tokenizer)
    reactive.connect()
    server = _Server(reactive)
    try:
        yield reactive, f"http://127.0.0.1:{server.port}/"
    finally:
        server.close()
        reactive.dispose()


@pytest.fixture
def browser(tmp_path):
    _require_browser()
    os.environ.setdefault("SE_OFFLINE", "true")  # never let selenium-manager go looking for drivers
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    try:
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER, log_output=os.devnull))
    except Exception as exc:
        pytest.skip(f"headless Chromium did not start: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def test_chat_streams_updates_memory_and_survives_reload(served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    reactive, url = served
    wait = WebDriverWait(browser, 60, poll_frequency=0.05)
    browser.get(url)
    wait.until(lambda d: d.find_element(By.ID, "connection").text == "connected")
    session = browser.execute_script("return window.rxnnChat.session")
    assert session and session == browser.find_element(By.ID, "session-id").text

    box = browser.find_element(By.ID, "input")
    box.send_keys("Hello, model!")
    box.send_keys(Keys.ENTER)  # Enter sends

    # Tokens stream into the assistant bubble (untrained tiny model: noise, but text).
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant")
               and d.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1].text.strip())
    wait.until(lambda d: "memory updated" in d.find_element(By.ID, "status").text)
    assert "memory updated (v1)" in browser.find_element(By.ID, "status").text
    assert browser.find_element(By.ID, "turns").text == "turn 1"
    user = browser.find_elements(By.CSS_SELECTOR, ".msg.user")
    assert [u.text for u in user] == ["Hello, model!"]
    answer = browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1].text
    assert box.get_attribute("value") == ""

    browser.refresh()
    wait.until(lambda d: d.find_element(By.ID, "connection").text == "connected")
    assert browser.execute_script("return window.rxnnChat.session") == session
    assert browser.find_element(By.ID, "turns").text == "turn 1"
    assert [m.text for m in browser.find_elements(By.CSS_SELECTOR, ".msg.user")] == ["Hello, model!"]
    assert browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1].text == answer
    state = reactive.session_state(session)
    assert state is not None and state.turns == 1

    # Reset clears the page and the server's session.
    browser.find_element(By.ID, "reset").click()
    wait.until(lambda d: d.find_element(By.ID, "status").text == "memory reset")
    assert browser.find_element(By.ID, "turns").text == "turn 0"
    assert not browser.find_elements(By.CSS_SELECTOR, ".msg")
    assert reactive.session_state(session).turns == 0


def test_server_error_is_shown_in_the_status_line(served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _reactive, url = served
    wait = WebDriverWait(browser, 60, poll_frequency=0.05)
    browser.get(url)
    wait.until(lambda d: d.find_element(By.ID, "connection").text == "connected")
    # A query longer than the model's context is refused by the server: the page shows the error.
    browser.execute_script("document.getElementById('input').value = 'word '.repeat(400);")
    browser.find_element(By.ID, "send").click()
    wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("error: too_long"))
    assert "error" in browser.find_element(By.ID, "status").get_attribute("class")
    assert browser.find_element(By.ID, "cancel").get_attribute("disabled") is not None


@pytest.fixture
def api_key_env(monkeypatch):
    """Set before `served` builds the app (fixtures run in argument order): the server then requires the key."""
    monkeypatch.setenv("RXNN_API_KEY", "page-key")
    return "page-key"


def test_page_authenticates_with_a_key_from_the_url_fragment(api_key_env, served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    reactive, url = served
    wait = WebDriverWait(browser, 60, poll_frequency=0.05)
    browser.get(url + "#api_key=" + api_key_env)  # (without it: tests/rxnn_runtime/server/test_security.py)
    wait.until(lambda d: d.find_element(By.ID, "connection").text == "connected")
    session = browser.execute_script("return window.rxnnChat.session")
    box = browser.find_element(By.ID, "input")
    box.send_keys("hello")
    box.send_keys(Keys.ENTER)
    wait.until(lambda d: d.find_element(By.ID, "turns").text == "turn 1")
    assert reactive.session_state(session).turns == 1
