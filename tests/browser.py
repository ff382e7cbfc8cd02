"""Debian's headless Chromium, driven over the DevTools protocol: pages as a person sees them,
behind a login (the Prefect UI keeps the stack's auth string in its origin's localStorage)."""

from __future__ import annotations

import base64
import itertools
import json
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect


class HeadlessChromium:
    """One headless Chromium with a profile of its own, and its one page.

    Example:
        ```python
        with HeadlessChromium(tmp_path / "profile") as browser:
            browser.open("http://127.0.0.1:4200/runs")
            browser.wait_for_text("submit-job")
        ```
    """

    def __init__(self, profile: Path, width: int = 1440, height: int = 900) -> None:
        profile.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.close()
                raise RuntimeError("Chromium did not open its DevTools port")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        page = next(
            target
            for target in httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
            if target["type"] == "page"
        )
        self.socket: ClientConnection = connect(page["webSocketDebuggerUrl"], max_size=None)
        self.ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command and its result (events that arrive meanwhile are passed over)."""
        call_id = next(self.ids)
        self.socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def open(self, url: str) -> None:
        """Go to `url` and wait for its document to load."""
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + 30
        while self.evaluate("document.readyState") != "complete" and time.monotonic() < deadline:
            time.sleep(0.1)

    def text(self) -> str:
        """What the page shows now."""
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for_text(self, text: str, timeout: float = 45) -> bool:
        """Whether the page shows `text` within `timeout` seconds (the UI fetches after load)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.text():
                return True
            time.sleep(0.5)
        return False

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        if getattr(self, "socket", None):
            self.socket.close()
        self.process.kill()
        self.process.wait(timeout=30)

    def __enter__(self) -> HeadlessChromium:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
