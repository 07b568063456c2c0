"""`fastervlm web` as a user runs it: the command in a subprocess on a free loopback port with the tiny model,
driven through `gradio_client` and through headless Chromium (Debian's chromium + chromedriver, via Selenium).

One server serves the whole module; it is stopped (SIGTERM) at the end, pass or fail, and must delete its
temporary folder. Set FASTERVLM_WEB_SCREENSHOT=docs/web.png to save the page after the browser's question, and
FASTERVLM_WEB_RESULTS_SCREENSHOT=FILE.png to save the Results tab with the four-benchmark table.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_web_results import DISAGREE, make_runs

pytest.importorskip("gradio_client", reason='the web tests need the [web] extra: pip install "fastervlm[web]"')

CHROMIUM = Path(os.environ.get("FASTERVLM_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("FASTERVLM_CHROMEDRIVER", "/usr/bin/chromedriver"))
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1600")
QUESTION = "What is moving in the video?"
MAX_SECONDS = 5
STARTUP_SECONDS = 120


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    output: list[str] = field(default_factory=list)

    def log(self) -> str:
        return "".join(self.output)

    def work_dir(self) -> Path:
        line = next(line for line in self.output if "temporary folder" in line)
        return Path(line.rsplit("temporary folder ", 1)[1].rstrip(")\n"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"fastervlm web exited with {server.process.returncode}:\n{server.log()}")
        if any("serving" in line for line in server.output):
            try:
                urllib.request.urlopen(server.url, timeout=5).close()
                return
            except OSError:
                pass
        time.sleep(0.2)
    pytest.fail(f"fastervlm web did not start in {STARTUP_SECONDS} s:\n{server.log()}")


def _stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_runs(tmp_path_factory.mktemp("web-server-runs"))


@pytest.fixture(scope="module")
def home(runs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the server runs in, as docs/web.md's API example assumes it: `clip.mp4` and `runs/` in it."""
    from fastervlm.tiny.video import write_synthetic_video

    folder = tmp_path_factory.mktemp("web-home")
    (folder / "runs").symlink_to(runs, target_is_directory=True)
    write_synthetic_video(folder / "clip.mp4")
    return folder


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path, runs: Path, home: Path, tmp_path_factory: pytest.TempPathFactory):
    """`fastervlm web` with the tiny model, short answers and small limits, run in `home`; stopped at the end, pass
    or fail."""
    port = _free_port()
    command = [sys.executable, "-m", "fastervlm", "web", "--model", str(tiny_checkpoint), "--device", "cpu",
               "--port", str(port), "--max-new-tokens", "6", "--max-upload-mb", "1",
               "--max-video-seconds", str(MAX_SECONDS), "--runs", str(runs)]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
           "TMPDIR": str(tmp_path_factory.mktemp("web-tmp"))}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=home)
    server = Server(f"http://127.0.0.1:{port}/", process)
    reader = threading.Thread(target=lambda: server.output.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        _wait_until_up(server)
        yield server
    finally:
        _stop(server)
        reader.join(timeout=10)
    assert server.process.returncode == 0, f"the server did not stop cleanly:\n{server.log()}"
    assert not server.work_dir().exists(), "the temporary folder (uploads, sample, plots) must be deleted on exit"


@pytest.fixture(scope="module")
def client(server: Server):
    from gradio_client import Client

    return Client(server.url, verbose=False, download_files=str(Path(server.work_dir()).parent / "client-downloads"))


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A good upload, one too long for the page's limit, a text file, an mp4 that holds noise, one over 1 MB."""
    from fastervlm.tiny.video import write_synthetic_video

    root = tmp_path_factory.mktemp("web-uploads")
    (root / "notes.txt").write_text("this is not a video\n")
    (root / "noise.mp4").write_bytes(os.urandom(4096))
    (root / "big.mp4").write_bytes(os.urandom(1024 * 1024 + 1))
    return {
        "good": write_synthetic_video(root / "clip.mp4", num_frames=16, seed=3),
        "long": write_synthetic_video(root / "long.mp4", num_frames=8 * (MAX_SECONDS + 1), fps=8, height=32, width=32),
        "text": root / "notes.txt",
        "noise": root / "noise.mp4",
        "big": root / "big.mp4",
    }


def _ask(client, video: Path | None, question: str, *, compare: bool = False, reduction: float = 0.9) -> tuple:
    from gradio_client import handle_file

    return client.predict(
        handle_file(str(video)) if video is not None else None, question,
        "fastervlm", "reduction", reduction, "", compare, "none", "no budget", None, "", 6,
        api_name="/ask",
    )


# ----- gradio_client -------------------------------------------------------------------------------------------
def test_client_answer_equals_the_library(client, videos: dict[str, Path], tiny_pipeline) -> None:
    from PIL import Image

    from fastervlm.models.base import GenerationSettings

    message, answer, stats, picture, answer_b, stats_b, picture_b, speedup = _ask(client, videos["good"], QUESTION)
    frames = tiny_pipeline.frames(video=videos["good"])
    direct = tiny_pipeline.run([frames], [QUESTION], tiny_pipeline.pruner("fastervlm", reduction=0.9),
                                         GenerationSettings(max_new_tokens=6))[0]
    assert message.startswith("Answered from frames"), message
    assert answer == direct.text
    assert f"**{direct.visual_tokens} visual tokens**" in stats
    with Image.open(picture) as image:
        assert image.width > 100 and image.height > 100
    assert (answer_b, stats_b, picture_b, speedup) == ("", "", None, "")


def test_client_compare_shows_two_answers_and_the_speedup(client, videos: dict[str, Path], tiny_pipeline) -> None:
    message, answer, stats, picture, answer_b, stats_b, picture_b, speedup = _ask(client, videos["good"], QUESTION,
                                                                                  compare=True)
    every = tiny_pipeline.num_frames * tiny_pipeline.num_patches
    assert answer and answer_b, message
    assert f"**{every} visual tokens**" in stats_b and f"**{every} visual tokens**" not in stats
    assert picture is not None and picture_b is not None
    assert "speedup" in speedup and f"instead of {every} visual tokens" in speedup


@pytest.mark.parametrize("upload, question, words", [
    ("text", QUESTION, "notes.txt is not a video"),
    ("noise", QUESTION, "noise.mp4 is not a video"),
    ("long", QUESTION, f"up to {MAX_SECONDS} s"),
    ("good", "   ", "the question is empty"),
    (None, QUESTION, "no video"),
])
def test_client_bad_input_gets_a_message_not_a_traceback(client, videos: dict[str, Path], upload: str | None,
                                                         question: str, words: str) -> None:
    message, answer, *_ = _ask(client, videos[upload] if upload else None, question)
    assert message.startswith("**Error:**") and words in message, message
    assert "Traceback" not in message and answer == ""


def test_the_docs_api_example_runs_as_written(server: Server, home: Path) -> None:
    """docs/web.md's API example, in the folder the server runs in, with the server's address for the default one."""
    from doc_blocks import ROOT, blocks, run_python

    (example,) = [b for b in blocks(ROOT / "docs" / "web.md") if b.lang == "python"]
    printed = run_python(example, home, replace={"http://127.0.0.1:7860/": server.url})
    assert printed.splitlines()[-1] == f"{len(DISAGREE)} items where the configurations disagree in tiny / MSVD"
    answered = printed.splitlines()[-2]  # configuration A's answer | the speedup line
    assert " | Time to first token: fastervlm" in answered and "speedup" in answered


def test_client_upload_size_is_bounded(client, videos: dict[str, Path]) -> None:
    with pytest.raises(Exception, match="maximum file size"):
        _ask(client, videos["big"], QUESTION)


def test_client_results_tab(client, runs: Path) -> None:
    message, table, plot, groups, items = client.predict(str(runs), "", "strict", api_name="/results")
    assert message == "" and "| tiny | fastervlm_r0.9 |" in table and Path(plot).is_file()
    assert groups["value"] == "tiny / MSVD"
    assert len(items["data"]) == 5
    filtered = client.predict("tiny / MSVD", True, api_name="/items")
    assert [row[0] for row in filtered["data"]] == DISAGREE
    message, *_ = client.predict(str(runs / "nowhere"), "", "strict", api_name="/results")
    assert message.startswith("**Error:**") and "is not a folder" in message


# ----- headless Chromium ---------------------------------------------------------------------------------------
@pytest.fixture
def browser():
    if not CHROMIUM.is_file() or not CHROMEDRIVER.is_file():
        pytest.skip(f"browser tests need {CHROMIUM} and {CHROMEDRIVER} (Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="browser tests need selenium (the [test] extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"fastervlm-chromium-{os.getpid()}-{time.monotonic_ns()}"
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait_text(driver, selector: str, timeout: float = 60) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.find_element(By.CSS_SELECTOR, selector).text.strip())
    return driver.find_element(By.CSS_SELECTOR, selector).text


def _upload(driver, video: Path, *, lands: bool = True) -> None:
    """Clear the video box, choose `video` in its file input and (when it `lands`) wait for the player."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 30)
    if driver.find_elements(By.CSS_SELECTOR, "#video video"):
        driver.find_element(By.CSS_SELECTOR, "#video button[aria-label='Clear']").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#video input[type=file]"))
    driver.find_element(By.CSS_SELECTOR, "#video input[type=file]").send_keys(str(video))
    if lands:
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#video video"))


def _ask_in_page(driver) -> str:
    """Click Ask and return the message that replaces the previous one."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    previous = driver.find_element(By.CSS_SELECTOR, "#message").text
    driver.find_element(By.CSS_SELECTOR, "#ask").click()

    def settled(d) -> str | None:  # while it runs, the box shows the progress tracker's text instead
        text = d.find_element(By.CSS_SELECTOR, "#message").text.strip()
        return text if text != previous and text.startswith(("Answered", "Error:")) else None

    return WebDriverWait(driver, 60).until(settled)


def _requested_hosts(driver) -> set[str]:
    import json
    from urllib.parse import urlsplit

    hosts = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = urlsplit(message["params"]["request"]["url"])
            if url.scheme in ("http", "https", "ws", "wss"):
                hosts.add(url.hostname)
    return hosts


@pytest.mark.browser
def test_browser_ask_compare_and_bad_uploads(server: Server, browser, videos: dict[str, Path]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url)
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#question textarea"))
    browser.find_element(By.CSS_SELECTOR, "#question textarea").send_keys(QUESTION)
    browser.find_element(By.CSS_SELECTOR, "#compare input").click()
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.CSS_SELECTOR, "#answer-b").is_displayed())

    _upload(browser, videos["good"])
    uploaded = browser.find_element(By.CSS_SELECTOR, "#video video").get_attribute("src")
    assert f"{server.work_dir()}/uploads/" in uploaded, "uploads must land in the server's temporary folder"
    message = _ask_in_page(browser)
    assert message.startswith("Answered from frames"), message
    for column in ("a", "b"):
        answer = browser.find_element(By.CSS_SELECTOR, f"#answer-{column} textarea").get_property("value")
        assert answer.strip(), f"no answer in column {column}"
        assert "visual tokens" in _wait_text(browser, f"#stats-{column}")
        WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, f"#picture-{column} img"))
        image = browser.find_element(By.CSS_SELECTOR, f"#picture-{column} img")
        WebDriverWait(browser, 30).until(lambda d: d.execute_script("return arguments[0].naturalWidth", image) > 100)
    every = 8 * 64
    assert f"{every} visual tokens" in browser.find_element(By.CSS_SELECTOR, "#stats-b").text
    assert "speedup" in _wait_text(browser, "#speedup")
    if os.environ.get("FASTERVLM_WEB_SCREENSHOT"):
        _screenshot(browser, Path(os.environ["FASTERVLM_WEB_SCREENSHOT"]))

    _upload(browser, videos["text"], lands=False)  # the page's upload box refuses it with a notice
    WebDriverWait(browser, 10).until(lambda d: "Invalid file type: notes.txt" in d.find_element(By.TAG_NAME, "body").text)
    _upload(browser, videos["big"], lands=False)  # over --max-upload-mb: refused before it is sent
    WebDriverWait(browser, 10).until(lambda d: "exceed the maximum allowed size" in d.find_element(By.TAG_NAME, "body").text)
    _upload(browser, videos["noise"])  # an .mp4 that holds noise reaches the server, which says what is wrong
    message = _ask_in_page(browser)
    assert message.startswith("Error:") and "noise.mp4 is not a video" in message, message
    assert "Traceback" not in browser.find_element(By.TAG_NAME, "body").text
    assert _requested_hosts(browser) <= {"127.0.0.1"}, "the page must not call anything but its own server"


@pytest.mark.browser
def test_browser_results_tab_and_disagreement_filter(server: Server, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url)
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_elements(By.XPATH, "//button[@role='tab' and normalize-space()='Results']"))
    browser.find_element(By.XPATH, "//button[@role='tab' and normalize-space()='Results']").click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#load-results").is_displayed())
    browser.find_element(By.CSS_SELECTOR, "#load-results").click()  # the folder comes from --runs
    wait.until(lambda d: "fastervlm_r0.9" in d.find_element(By.CSS_SELECTOR, "#report-table").text)
    wait.until(lambda d: d.execute_script(
        "const i = document.querySelector('#report-plot img'); return i !== null && i.naturalWidth > 100"))

    def item_ids(d) -> list[str]:  # the first column of the item browser's rows, read in one go (it re-renders)
        return d.execute_script("return [...document.querySelectorAll(\"#items [role=gridcell][data-col='0']\")]"
                                ".map(cell => cell.textContent.trim())")

    wait.until(lambda d: len(item_ids(d)) == 5)
    browser.find_element(By.CSS_SELECTOR, "#disagree input").click()
    wait.until(lambda d: item_ids(d) == DISAGREE)


WIDE_RUNS = {"none": (None, 2048), "fastervlm_r0.9": ({"method": "fastervlm", "reduction": 0.9}, 208),
             "visionzip_r0.95_dominant_ratio0.5": ({"method": "visionzip", "reduction": 0.95, "dominant_ratio": 0.5}, 104)}
"""Three configurations on the four benchmarks: the report's widest table (14 columns), a long run name."""


@pytest.fixture(scope="module")
def wide_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from eval_helpers import make_run
    from fake_openai_server import FakeOpenAI

    from fastervlm.eval.judge import JudgeSettings, judge_runs
    from fastervlm.eval.rundir import find_runs

    root = tmp_path_factory.mktemp("web-wide-runs")
    for benchmark in ("tgif", "msvd", "msrvtt", "activitynet"):
        for name, (method, tokens) in WIDE_RUNS.items():
            answers = {f"q{i}": (f"a{i}", f"a{i}" if (i + len(name)) % 3 else "other") for i in range(6)}
            make_run(root / "runs/tiny" / benchmark / name, answers, benchmark=benchmark, tokens=tokens,
                     method=method and {"keep": None, **method}, flops=[4.2e12 * tokens / 2048] * 6)
    with FakeOpenAI() as judge:
        judge_runs(find_runs(root / "runs"), JudgeSettings(base_url=judge.url, cache_dir=root / "judge-cache"),
                   api_key="k", progress=False, report=lambda line: None)
    return root / "runs"


TABLE_LAYOUT = """
const table = document.querySelector('#report-table table');
const broken = [];
for (const cell of table.querySelectorAll('th, td')) {
  const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    for (const word of node.textContent.matchAll(/\\S+/g)) {
      const range = document.createRange();
      range.setStart(node, word.index);
      range.setEnd(node, word.index + word[0].length);
      const lines = new Set([...range.getClientRects()].map(rect => Math.round(rect.top)));
      if (lines.size > 1) broken.push(word[0]);
    }
  }
  if (cell.scrollWidth > cell.clientWidth + 1) broken.push('overflows: ' + cell.textContent);
}
const style = getComputedStyle(table.querySelector('td'));
return {table: table.getBoundingClientRect().width, page: document.querySelector('#load-results').getBoundingClientRect().width,
        cells: table.querySelectorAll('th, td').length, broken: broken, wordBreak: style.wordBreak,
        overflowWrap: style.overflowWrap};
"""
"""The report table's width against the page's (the Load button spans it), every word of every cell that the
browser laid out over two lines (or that overflows its cell), and the cells' computed line-breaking styles."""


@pytest.mark.browser
def test_browser_results_table_uses_the_page_width_without_mid_word_breaks(server: Server, browser,
                                                                           wide_runs: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url)
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_elements(By.XPATH, "//button[@role='tab' and normalize-space()='Results']"))
    browser.find_element(By.XPATH, "//button[@role='tab' and normalize-space()='Results']").click()
    box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#runs-dir textarea, #runs-dir input"))
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(wide_runs))
    browser.find_element(By.CSS_SELECTOR, "#load-results").click()
    wait.until(lambda d: "visionzip_r0.95_dominant_ratio0.5" in d.find_element(By.CSS_SELECTOR, "#report-table").text)
    layout = browser.execute_script(TABLE_LAYOUT)
    assert layout["cells"] == 7 * 14  # header, three budget rows, three configurations; 14 columns
    assert 0.97 * layout["page"] <= layout["table"] <= layout["page"] + 1, layout  # the page's width, not beyond
    assert layout["broken"] == [], f"words broken across lines or cut: {layout['broken']}"
    assert (layout["wordBreak"], layout["overflowWrap"]) == ("normal", "normal")
    if os.environ.get("FASTERVLM_WEB_RESULTS_SCREENSHOT"):
        _screenshot(browser, Path(os.environ["FASTERVLM_WEB_RESULTS_SCREENSHOT"]))


def _screenshot(driver, path: Path) -> None:
    """The whole page as a PNG (the README's picture), in 128 colours to stay small."""
    import base64
    import io

    from PIL import Image

    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(io.BytesIO(base64.b64decode(shot["data"]))) as image:
        image.convert("RGB").quantize(colors=128).save(path, optimize=True)
