"""Notebook 06's playground as a person uses it: JupyterLab in headless Chromium, a question typed, Generate pressed,
both answers arriving token by token, and a screenshot of the result.

Needs Debian's `chromium` (`apt-get install chromium`), and jupyterlab and playwright from requirements.txt (Playwright
drives the system Chromium; it never downloads a browser). Elsewhere the test skips and says why; where
SEMIFINETUNE_REQUIRE_BROWSER is set (CI) a missing piece fails it instead.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from semifinetune.notebooks import NOTEBOOK_DIR
from semifinetune.runs import PROJECT_ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Flags that keep a headless Chromium quiet and offline in a container (no sandbox as root, no GPU, no sync).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
QUESTION = "Which company makes chips for fabless designers?"
FINISHED = re.compile(r"\[(eos|length), \d+ tokens, [\d.]+ s, think block")  # playground.describe's last line


def missing() -> str:
    """Why the browser test cannot run here, or ""."""
    if CHROMIUM is None:
        return "Chromium is not installed (Debian: apt-get install chromium; CI installs it)"
    for module in ("playwright", "jupyterlab"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install -r requirements.txt)"
    return ""


def test_the_browser_test_runs_where_required():
    """CI sets SEMIFINETUNE_REQUIRE_BROWSER: there a missing browser is a failure, not a quiet skip."""
    if os.environ.get("SEMIFINETUNE_REQUIRE_BROWSER") and missing():
        pytest.fail(missing())


def playground_notebook(folder: Path, run_dir: Path) -> Path:
    """Notebook 06's parameters and playground cells, as they are in notebooks/06, pointed at run_dir."""
    source = nbformat.read(NOTEBOOK_DIR / "06_inference_sweep.ipynb", as_version=4)
    parameters = next(c for c in source.cells if "parameters" in c.metadata.get("tags", []))
    play = next(c for c in source.cells if c.cell_type == "code" and "playground(run_dir, interactive)" in c.source)
    assert re.search(r"^interactive = True", parameters.source, re.M), "the playground's default is interactive"
    nb = nbformat.v4.new_notebook(metadata=source.metadata)
    nb.cells = [nbformat.v4.new_code_cell(parameters.source + f"\nrun_dir = {str(run_dir)!r}"),
                nbformat.v4.new_code_cell(play.source)]
    path = folder / "playground.ipynb"
    nbformat.write(nb, path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on a free local port, serving tmp_path/work; yields (url, token, work folder)."""
    work, home = tmp_path / "work", tmp_path / "jupyter"
    work.mkdir()
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "SEMIFINETUNE_DRIVE": "off"}
    # The folder is the working directory, not an argument: the playground reads the kernel's parent's command line
    # to tell a headless runner from a front end, and pytest's temporary paths contain "pytest".
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         f"--IdentityProvider.token={token}", "--ServerApp.port_retries=0", "--allow-root"],
        cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "jupyterlab.log", "wb"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as reply:
                    json.load(reply)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start: {(tmp_path / 'jupyterlab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield url, token, work
    finally:
        server.terminate()  # shuts its kernels down too
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


WATCH = """() => {
  // Every change of the two answer boxes, in order: what a person sees as the answers arrive.
  window.answerTexts = [];
  const boxes = () => Array.from(document.querySelectorAll('.widget-output')).slice(-2).map(b => b.innerText);
  new MutationObserver(() => {
    const now = boxes();
    const last = window.answerTexts[window.answerTexts.length - 1];
    if (!last || now[0] !== last[0] || now[1] !== last[1]) window.answerTexts.push(now);
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def grows(texts: list[str]) -> int:
    """How many times a box's text grew by appending, from the first text to the last."""
    return sum(1 for a, b in zip(texts, texts[1:]) if len(b) > len(a) and b.startswith(a))


def streamed(snapshots: list[list[str]], which: int) -> list[str]:
    """One box's texts while its answer streamed: from its header to the first text in describe()'s layout."""
    texts = [s[which] for s in snapshots]
    texts = [t for i, t in enumerate(texts) if i == 0 or t != texts[i - 1]]
    return [t for t in texts if t.strip() and not FINISHED.search(t)]


def kernel_ready(page, seconds: float = 90) -> None:
    """Wait until the notebook's kernel is idle; where JupyterLab asks which kernel to start, press Select, as a
    person would (it asks when its list of kernels had not loaded yet as the notebook opened)."""
    select = page.locator(".jp-Dialog").get_by_role("button", name="Select", exact=True)
    idle = page.locator(".jp-StatusBar-Widget", has_text=re.compile(r"\| Idle"))
    deadline = time.monotonic() + seconds
    while not idle.count():
        if select.count() and select.is_visible():
            select.click()
        if time.monotonic() > deadline:
            raise AssertionError(f"the kernel was not idle after {seconds:.0f} s")
        page.wait_for_timeout(250)


@pytest.mark.skipif(bool(missing()), reason=missing() or "runs")
def test_the_playground_in_a_browser(tiny_run, jupyterlab, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, token, work = jupyterlab
    playground_notebook(work, tiny_run)
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000})
        page = browser.new_page()
        page.goto(f"{url}/lab/tree/playground.ipynb?token={token}")
        page.locator(".jp-Notebook").first.wait_for(timeout=60_000)
        kernel_ready(page)
        page.locator(".lm-MenuBar-item", has_text="Run").first.click()
        page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()

        prompt = page.locator(".widget-textarea textarea")
        try:
            prompt.wait_for(timeout=120_000)  # the kernel starts and loads base + adapter
        except Exception:
            page.screenshot(path=str(tmp_path / "no-widget.png"))
            shown = page.locator(".jp-OutputArea-output").all_inner_texts()
            pytest.fail(f"no playground widget after 120 s; the notebook shows {shown} (screenshot: {tmp_path / 'no-widget.png'})")
        expect(page.get_by_role("button", name="Generate")).to_be_visible()
        prompt.fill(QUESTION)
        page.evaluate(WATCH)
        page.get_by_role("button", name="Generate").click()

        boxes = page.locator(".widget-output")
        for which in (-2, -1):  # base, then tuned
            expect(boxes.nth(boxes.count() + which)).to_contain_text(FINISHED, timeout=120_000)
        page.wait_for_timeout(300)
        snapshots = page.evaluate("window.answerTexts")
        shot = tmp_path / "playground.png"
        page.locator(".widget-vbox").first.screenshot(path=str(shot))  # the whole playground
        notes, base, tuned = (boxes.nth(boxes.count() + i).inner_text() for i in (-3, -2, -1))
        browser.close()

    assert notes.startswith("no notes (retrieval off")  # the box starts unticked: the question alone
    assert base.startswith("BASE") and tuned.startswith("TUNED")
    assert FINISHED.search(base) and FINISHED.search(tuned)
    base_stream, tuned_stream = streamed(snapshots, 0), streamed(snapshots, 1)
    # token by token: each box's text grew piece by piece, the tuned answer after the base one
    assert grows(base_stream) >= 3, base_stream
    assert grows(tuned_stream) >= 3, tuned_stream
    first_tuned = next(i for i, s in enumerate(snapshots) if len(s[1].strip()) > len("TUNED"))
    assert any(FINISHED.search(s[0]) is None and len(s[0].strip()) > len("BASE") for s in snapshots[:first_tuned])
    # the screenshot shows the widget, not a blank page
    from PIL import Image

    image = Image.open(shot).convert("L")
    assert image.width > 600 and image.height > 200
    assert len(set(image.getdata())) > 20, "the screenshot is blank"
    keep = os.environ.get("SEMIFINETUNE_SCREENSHOTS")
    if keep:
        shutil.copy(shot, Path(keep) / shot.name)
