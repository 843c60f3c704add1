"""End to end: a real agent run (``edge_agent.cli replay`` with the session's int8 bottle bundle) fills a database;
the page scores an upload with the same bundle (AppTest), then `streamlit run` serves it to headless Chromium
(playwright): log in, every page, one feedback recorded through the browser and found in the database.

Screenshots of every page go to tests/artifacts/review/ (gitignored); the path is printed.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.review.factory import (
    APP,
    REPO,
    REVIEWER,
    REVIEWER_PW,
    VIEWER_ENV,
    app_test,
    goto,
    login,
    viewer_hash,
    write_config,
)
from tests.services import free_port

ARTIFACTS = REPO / "tests" / "artifacts" / "review"
CHROMIUM = Path(os.environ.get("LINEWATCH_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
PICKS = {"good": 2, "broken_large": 3, "contamination": 2}


@pytest.fixture(scope="module")
def agent_run(tmp_path_factory, bottle_bundle, datasets_root):
    """Real bottle test images through `python -m edge_agent.cli replay`; the review config points at the result."""
    root = tmp_path_factory.mktemp("review_e2e")
    images = root / "images"
    images.mkdir()
    for kind, n in PICKS.items():
        for path in sorted((datasets_root / "mvtec_ad" / "bottle" / "test" / kind).glob("*.png"))[:n]:
            shutil.copyfile(path, images / f"{kind}_{path.name}")
    shutil.copytree(bottle_bundle, root / "bundles" / "bottle")
    camera = {"id": "line1-top", "bundle": str(root / "bundles" / "bottle")}
    agent_cfg = {
        "agent": {"name": "e2e", "data_dir": str(root / "data")},
        "database": {"url": f"sqlite:///{root / 'agent.db'}"},
        "cameras": [camera | {"source": {"type": "folder", "path": str(root / "in")}}],
        "metrics": {"enabled": False},
    }
    (root / "agent.yaml").write_text(yaml.safe_dump(agent_cfg))
    cmd = [sys.executable, "-m", "edge_agent.cli", "replay", str(images), "--config", str(root / "agent.yaml")]
    out = subprocess.run([*cmd, "--flush-seconds", "1"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    with sqlite3.connect(root / "agent.db") as conn:
        rows = conn.execute("SELECT id, frame_id, anomalous FROM verdicts ORDER BY id").fetchall()
    assert len(rows) == sum(PICKS.values())
    alarms = {frame: vid for vid, frame, anomalous in rows if anomalous}
    assert any(f.startswith("replay/broken_large") for f in alarms), rows
    config = write_config(root, f"sqlite:///{root / 'agent.db'}", bundles_dir=root / "bundles")
    return SimpleNamespace(root=root, db=root / "agent.db", config=config, alarms=alarms, images=images)


def test_inspect_page_scores_an_upload_with_the_edge_bundle(agent_run, monkeypatch):
    monkeypatch.setenv("LINEWATCH_REVIEW_CONFIG", str(agent_run.config))
    at = goto(login(app_test(), REVIEWER, REVIEWER_PW), "Inspect")
    assert at.selectbox(key="i_bundle").value.startswith("bottle: bottle-patchcore-int8")
    image = next(agent_run.images.glob("broken_large_*.png"))
    at.file_uploader(key="i_upload").set_value((image.name, image.read_bytes(), "image/png"))
    at.run()
    assert not at.exception
    (verdict,) = [e.value for e in at.error]  # the session bundle's type head names the type
    assert re.fullmatch(r"DEFECT: (broken_large|broken_small|contamination) \(\d+% confidence\)", verdict), verdict
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["Score"]) > float(metrics["Threshold"])
    with sqlite3.connect(agent_run.db) as conn:  # the same score the agent stored for this file
        (stored,) = conn.execute("SELECT score FROM verdicts WHERE frame_id = ?", (f"replay/{image.name}",)).fetchone()
    assert float(metrics["Score"]) == pytest.approx(stored, rel=1e-3)
    at.radio(key="i_how").set_value("pick one").run()
    assert any("replay/" in option for option in at.selectbox(key="i_pick").options)
    at.radio(key="i_how").set_value("upload an image").run()
    at.file_uploader(key="i_upload").set_value(("broken.png", b"\x89PNG\r\n\x1a\n", "image/png")).run()
    assert any("Cannot read this image" in e.value for e in at.error)


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"streamlit exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as resp:
                if resp.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"streamlit not healthy after {timeout} s: {log.read_text()[-3000:]}")


@pytest.fixture
def served(agent_run, tmp_path):
    """`streamlit run review/app.py` on a free loopback port, headless, no usage statistics."""
    port = free_port()
    env = os.environ | {VIEWER_ENV: viewer_hash(), "PYTHONUNBUFFERED": "1"}
    env.pop("LINEWATCH_REVIEW_CONFIG", None)  # the --config argument is what `make review` uses
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true", "--server.port", str(port)]
    cmd += ["--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer"]
    cmd += ["--server.fileWatcherType", "none", "--", "--config", str(agent_run.config)]
    log = tmp_path / "streamlit.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_browser_login_pages_and_feedback_end_to_end(agent_run, served):
    if not CHROMIUM.exists():
        hint = "run `make system-deps` (apt-get install -y chromium) or set LINEWATCH_CHROMIUM"
        pytest.fail(f"Chromium not found at {CHROMIUM}: {hint}")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError as err:
        pytest.fail(f"playwright is not installed ({err}): pip install -e '.[review,dev]'")
    url, log = served
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nreview page screenshots: {ARTIFACTS}")
    vid = next(v for f, v in sorted(agent_run.alarms.items()) if f.startswith("replay/broken_large"))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.set_default_timeout(60_000)

        def shot(name: str, height: int = 1600) -> None:
            page.set_viewport_size({"width": 1400, "height": height})  # the page scrolls inside; grow the window
            page.wait_for_timeout(800)  # let charts and images finish drawing
            page.screenshot(path=ARTIFACTS / f"{name}.png")

        def open_page(name: str, title: str) -> None:
            page.get_by_test_id("stSidebar").get_by_text(name, exact=True).click()
            expect(page.get_by_role("heading", name=title)).to_be_visible()

        try:
            page.goto(url)
            page.get_by_label("User name").fill(REVIEWER)
            page.get_by_label("Password", exact=True).fill("wrong password")
            page.get_by_role("button", name="Log in").click()
            expect(page.get_by_text("Wrong user name or password")).to_be_visible()
            page.get_by_label("User name").fill(REVIEWER)
            page.get_by_label("Password", exact=True).fill(REVIEWER_PW)
            shot("01-login")
            page.get_by_role("button", name="Log in").click()
            expect(page.get_by_text("Logged in as")).to_be_visible()

            expect(page.get_by_role("heading", name="Inspect an image")).to_be_visible()
            page.locator("input[type=file]").set_input_files(next(agent_run.images.glob("broken_large_*.png")))
            expect(page.get_by_text("DEFECT")).to_be_visible()
            shot("02-inspect", 1500)

            open_page("Review queue", "Review queue")
            card = page.locator(f".st-key-card_{vid}")
            expect(card.locator("img").first).to_be_visible()
            expect(card.locator("img")).to_have_count(2)  # the original and the heatmap drawn from the stored map
            shot("03-review-queue", 2600)
            card.get_by_text("confirmed defect", exact=True).click()
            card.get_by_test_id("stSelectbox").click()
            page.get_by_role("option", name="broken_large").click()
            card.get_by_label("Note").fill("e2e: broken at the rim")
            card.get_by_role("button", name="Save feedback").click()
            saved = page.get_by_text(f"Saved: #{vid} is a confirmed defect (broken_large), by {REVIEWER}")
            expect(saved).to_be_visible()
            saved.scroll_into_view_if_needed()
            shot("04-feedback-saved", 1200)

            open_page("Statistics", "Statistics")
            expect(page.get_by_text("Drift of normal scores")).to_be_visible()
            shot("05-statistics", 2200)
            open_page("Models", "Models")
            expect(page.get_by_text("Bundle verifies")).to_be_visible()
            expect(page.get_by_text("What each camera runs")).to_be_visible()
            expect(page.get_by_text("Expected false-alarm rate")).to_be_visible()
            expect(page.get_by_text("Recall on synthetic defects")).to_be_visible()
            shot("06-models", 2200)
            open_page("Guide", "Guide")
            # the example's caption (a stale chart label of the Models page may still be fading out beside it)
            expect(page.get_by_role("strong").filter(has_text="broken_large").first).to_be_visible()
            shot("07-guide", 1800)
        except Exception:
            page.screenshot(path=ARTIFACTS / "failure.png")
            print(log.read_text()[-4000:])
            raise
        finally:
            browser.close()

    with sqlite3.connect(agent_run.db) as conn:
        rows = conn.execute("SELECT verdict_id, label, defect_type, reviewer, note FROM feedback").fetchall()
    assert rows == [(vid, "defect", "broken_large", REVIEWER, "e2e: broken at the rim")]
    assert REVIEWER_PW not in log.read_text()
    assert sorted(p.name for p in ARTIFACTS.glob("0*.png")) == [
        "01-login.png",
        "02-inspect.png",
        "03-review-queue.png",
        "04-feedback-saved.png",
        "05-statistics.png",
        "06-models.png",
        "07-guide.png",
    ]
