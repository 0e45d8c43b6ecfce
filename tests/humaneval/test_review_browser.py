"""End to end in real headless Chromium: an annotator votes 10 times by keyboard, the admin sees it.

Needs Debian's chromium (/usr/bin/chromium) and the Python ``playwright`` package (its driver
only: no ``playwright install``). Screenshots of every page go to .test-artifacts/humaneval/.
"""

import contextlib
import os
from pathlib import Path

import httpx
import pytest

from instructengine.config import load_config
from instructengine.humaneval.config import ResultsConfig
from instructengine.humaneval.server import background_server
from instructengine.humaneval.study import create_study

from .evaldirs import build_eval_run, review_config

CHROMIUM = os.environ.get("INSTRUCTENGINE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / ".test-artifacts" / "humaneval"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EVIL = 'a <b>bold</b> <img src=x onerror="alert(1)"> fox & a "quoted" dog'
PROMPTS = [EVIL, "a red sphere left of a blue cube", "three yellow triangles on grass",
           "a watercolor painting of a lighthouse at dawn", "two cats sharing one umbrella"]

playwright_sync = pytest.importorskip("playwright.sync_api", reason="the Python playwright package is not installed (pip install playwright)")
if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install -y chromium)", allow_module_level=True)


@pytest.fixture
def study(tmp_path):
    runs = [build_eval_run(tmp_path, m, prompts=PROMPTS, size=256, style=k)
            for k, m in enumerate(["instructengine", "sd15", "diffusion-dpo"])]
    cfg = review_config(tmp_path, runs, "study.name=DrawBench <pilot> & co", "study.pairs=reference",
                        "study.annotators=[alice,bob]", "study.annotators_per_item=2",
                        "study.protocol=custom", "study.criteria=[consistency,aesthetics,realism]")
    made = create_study(cfg)
    assert made.n_tasks == 20  # 5 prompts x 2 pairs x 2 annotators: alice has exactly 10 tasks
    with background_server(made.database_url) as base:
        yield base, made


@contextlib.contextmanager
def chromium(profile: Path, **options):
    with playwright_sync.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=FLAGS, **options,
        )
        try:
            yield ctx
        finally:
            ctx.close()


@pytest.fixture
def browser_context(tmp_path):
    with chromium(tmp_path / "chromium-profile", viewport={"width": 1280, "height": 900}) as ctx:
        yield ctx


@pytest.fixture
def phone_context(tmp_path):
    """A phone-sized Chromium (390 x 844 CSS px, 3x pixels, touch), like a current iPhone."""
    with chromium(tmp_path / "chromium-phone", viewport={"width": 390, "height": 844}, device_scale_factor=3,
                  is_mobile=True, has_touch=True) as ctx:
        yield ctx


def wait_next_task(page, previous: str) -> str:
    page.wait_for_function(
        "prev => document.body.dataset.taskId !== prev && document.body.dataset.ready === '1'", arg=previous,
        timeout=15000,
    )
    return page.evaluate("() => document.body.dataset.taskId")


def test_annotator_votes_by_keyboard_and_admin_sees_them(study, browser_context):
    base, made = study
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser_context.new_page()
    alerts, problems = [], []
    page.on("dialog", lambda d: (alerts.append(d.message), d.dismiss()))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))

    page.goto(f"{base}/a/{made.annotator_tokens['alice']}")
    task = wait_next_task(page, "")
    assert page.text_content("#progress-text") == "Task 1 of 10"
    assert "DrawBench <pilot> & co" == page.text_content("#study-name")

    # one row per criterion then the overall choice; each key answers the highlighted row
    keys_per_vote = [["1", "ArrowRight", "t", "1"], ["2", "2", "3", "ArrowRight"], ["b", "4", "4", "4"],
                     ["ArrowLeft", "1", "1", "ArrowLeft"], ["3", "t", "T", "3"]]
    expected_overall = {"1": "left", "ArrowLeft": "left", "2": "right", "ArrowRight": "right",
                        "3": "tie", "t": "tie", "T": "tie", "4": "both_bad", "b": "both_bad"}
    overall = []
    shots = {}
    vote = 0
    undone = False
    while vote < 10:
        keys = keys_per_vote[vote % len(keys_per_vote)]
        for i, key in enumerate(keys):
            page.keyboard.press(key)
            if vote == 0 and i == 1:
                # show a half-answered task, then go back one question and answer it again
                active = page.locator(".question.active .q-label")
                assert active.text_content().startswith("Realism")
                page.screenshot(path=str(ARTIFACTS / "01-annotate-task.png"), full_page=True)
                shots["task"] = True
                page.keyboard.press("Backspace")
                assert active.text_content().startswith("Aesthetics")
                page.keyboard.press(key)
        overall.append(expected_overall[keys[-1]])
        vote += 1
        task = wait_next_task(page, task)
        if vote == 3 and not undone:
            # undo the third vote by keyboard: the same task comes back, then vote on it again
            page.keyboard.press("u")
            task = wait_next_task(page, task)
            assert page.text_content("#progress-text") == "Task 3 of 10"
            assert page.text_content("#status") == "Last vote undone"
            overall.pop()
            vote -= 1
            undone = True
    # the prompt with markup was shown as text, and nothing ran
    assert page.wait_for_selector("#done", state="visible")
    page.wait_for_timeout(400)  # let the progress bar's transition finish before the screenshot
    page.screenshot(path=str(ARTIFACTS / "03-annotate-done.png"), full_page=True)
    assert page.text_content("#progress-text") == "10 of 10 done"

    # resume: a fresh visit by bob starts at his first task; reporting an image by mouse works
    page2 = browser_context.new_page()
    page2.on("dialog", lambda d: (alerts.append(d.message), d.dismiss()))
    page2.goto(f"{base}/a/{made.annotator_tokens['bob']}")
    wait_next_task(page2, "")
    page2.click("button.flag[data-side='left']")
    page2.check("input[value='unsafe']")
    page2.fill("#flag-note", "<i>looks off</i>")
    page2.screenshot(path=str(ARTIFACTS / "02-annotate-report-dialog.png"))
    page2.click("#flag-send")
    playwright_sync.expect(page2.locator("#status")).to_have_text("Reported the left image as unsafe")
    seen_prompts = set()
    n_bob = 0
    for _ in range(10):  # walk bob's tasks to find the prompt with markup: shown literally, never parsed
        seen_prompts.add(page2.text_content("#prompt"))
        if EVIL in seen_prompts:
            page2.screenshot(path=str(ARTIFACTS / "06-annotate-markup-prompt-as-text.png"))
            break
        prev = page2.evaluate("() => document.body.dataset.taskId")
        for _ in range(4):  # tie on every row
            page2.keyboard.press("3")
        n_bob += 1
        wait_next_task(page2, prev)
    assert EVIL in seen_prompts
    assert page2.locator("#prompt img").count() == 0 and page2.locator("#prompt b").count() == 0

    bad = browser_context.new_page()
    assert bad.goto(f"{base}/a/not-a-real-token").status == 404
    assert bad.text_content("h1") == "This link is not valid"
    bad.screenshot(path=str(ARTIFACTS / "05-invalid-link.png"))

    admin = browser_context.new_page()
    admin.on("dialog", lambda d: (alerts.append(d.message), d.dismiss()))
    admin.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    admin.goto(f"{base}/admin/{made.admin_token}")
    admin.wait_for_function("() => document.body.dataset.loaded === '1'", timeout=15000)
    admin.wait_for_function("() => { const c = document.getElementById('chart'); return c.complete && c.naturalWidth > 0; }")
    assert admin.get_attribute("#vote-count", "data-votes") == str(10 + n_bob)
    assert admin.text_content("#study-name") == "DrawBench <pilot> & co"
    table = admin.text_content("#pairs-overall")
    assert "instructengine" in table and "sd15" in table and "diffusion-dpo" in table
    assert admin.locator("#bt tbody tr").count() == 3  # Bradley-Terry for three systems
    assert "alice" in admin.text_content("#progress") and "10 / 10" in admin.text_content("#progress")
    assert "<i>looks off</i>" in admin.text_content("#flags") and admin.locator("#flags i").count() == 0
    admin.screenshot(path=str(ARTIFACTS / "04-admin.png"), full_page=True)

    assert alerts == [], f"a page ran injected script: {alerts}"
    assert [p for p in problems if "404" not in p] == [], problems

    # the server holds exactly alice's 10 keyboard votes (plus the undone one) with the right choices
    log = httpx.get(f"{base}/api/admin/{made.admin_token}/votes.json?include_undone=true").json()
    alice = [r for r in log if r["annotator"] == "alice"]
    active = sorted((r for r in alice if r["status"] == "active"), key=lambda r: r["position"])
    assert len(active) == 10 and len([r for r in alice if r["status"] == "undone"]) == 1
    assert [r["choice"] for r in active] == overall
    assert [r["criterion_consistency"] for r in active[:2]] == ["left", "right"]
    assert shots and all((ARTIFACTS / f).stat().st_size > 5000 for f in (
        "01-annotate-task.png", "02-annotate-report-dialog.png", "03-annotate-done.png", "04-admin.png", "05-invalid-link.png"))


def in_view(page, selector: str, width: int, height: int) -> dict:
    box = page.locator(selector).first.bounding_box()
    assert box is not None, f"{selector} is not displayed"
    inside = box["x"] >= -0.5 and box["y"] >= -0.5 and box["x"] + box["width"] <= width + 0.5 and box["y"] + box["height"] <= height + 0.5
    assert inside, f"{selector} at {box} is not inside the {width}x{height} viewport"
    return box


def test_click_to_zoom_shows_full_resolution_and_blocks_votes(study, browser_context):
    base, made = study
    page = browser_context.new_page()
    page.goto(f"{base}/a/{made.annotator_tokens['alice']}")
    task = wait_next_task(page, "")
    shown = page.locator("#img-left").bounding_box()
    page.click("#img-left")
    playwright_sync.expect(page.locator("#zoom")).to_be_visible()
    page.wait_for_function("() => { const i = document.getElementById('zoom-img'); return i.complete && i.naturalWidth > 0; }")
    natural, rendered = page.evaluate(
        "() => { const i = document.getElementById('zoom-img'); return [i.naturalWidth, i.getBoundingClientRect().width]; }")
    assert natural == 256 and rendered == pytest.approx(natural)  # one image pixel per CSS pixel
    assert "256 \u00d7 256 px" in page.text_content("#zoom-note")
    page.keyboard.press("1")  # switches the zoomed image, never votes
    page.keyboard.press("2")
    playwright_sync.expect(page.locator("#zoom-note")).to_contain_text("right image")  # updates once the image loads
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "07-annotate-zoom.png"))
    page.keyboard.press("Escape")
    playwright_sync.expect(page.locator("#zoom")).to_be_hidden()
    assert page.evaluate("() => document.body.dataset.taskId") == task
    assert page.locator(".question.active").get_attribute("data-row") == "0"  # no answer was taken
    assert httpx.get(f"{base}/api/admin/{made.admin_token}/votes.json").json() == []
    assert shown["width"] < 1280 * 0.5


@pytest.mark.parametrize("protocol", ["paper", "per_criterion"])
def test_phone_layout_keeps_both_images_and_the_question_in_view(tmp_path, phone_context, protocol):
    W, H = 390, 844
    runs = [build_eval_run(tmp_path, m, prompts=PROMPTS, size=1024, style=k)
            for k, m in enumerate(["instructengine", "sd15"])]
    made = create_study(review_config(tmp_path, runs, "study.name=Phone pilot", "study.annotators=[carol]",
                                      "study.annotators_per_item=1", "study.gold.degraded=1",
                                      f"study.protocol={protocol}"))
    results = load_config(ResultsConfig, None, ["confidence=0.9"])
    with background_server(made.database_url, results=results) as base:
        page = phone_context.new_page()
        problems = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(f"{base}/a/{made.annotator_tokens['carol']}")
        task = wait_next_task(page, "")
        rows = 1 if protocol == "paper" else 5
        for r in range(rows):
            boxes = {sel: in_view(page, sel, W, H) for sel in ("#prompt", "#img-left", "#img-right",
                                                               ".question.active .q-label", ".question.active .choices")}
            assert page.evaluate("() => document.documentElement.scrollWidth") <= W
            assert page.evaluate("() => window.scrollY") == 0  # nothing had to be scrolled into view
            left, right = boxes["#img-left"], boxes["#img-right"]
            assert abs(left["y"] - right["y"]) < 1 and left["width"] >= 150  # side by side, each a usable size
            buttons = page.locator(".question.active .choice")
            assert buttons.count() == (3 if protocol == "paper" else 4)
            for i in range(buttons.count()):
                in_view(page, f".question.active .choice >> nth={i}", W, H)
            if r == 0 and protocol == "paper":
                page.screenshot(path="/tmp/review_390.png")
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "08-annotate-phone-390.png"))
            if r == 0 and protocol == "per_criterion":
                page.screenshot(path=str(ARTIFACTS / "09-annotate-phone-390-per-criterion.png"))
            page.locator(".question.active .choice[data-choice='tie']").tap()
        task = wait_next_task(page, task)  # the last tap submitted the vote
        assert page.text_content("#progress-text").startswith("Task 2 of")
        # tap-to-zoom works on the phone too and shows the 1024 px original size
        page.locator("#img-right").tap()
        page.wait_for_function("() => { const i = document.getElementById('zoom-img'); return i.complete && i.naturalWidth === 1024; }")
        page.locator("#zoom-close").tap()

        admin = phone_context.new_page()
        admin.goto(f"{base}/admin/{made.admin_token}")
        admin.wait_for_function("() => document.body.dataset.loaded === '1'", timeout=15000)
        admin.wait_for_function("() => { const c = document.getElementById('chart'); return c.complete && c.naturalWidth > 0; }")
        assert admin.evaluate("() => document.documentElement.scrollWidth") <= W, "the admin page overflows"
        assert "90% CI" in admin.text_content("#pairs-overall thead")
        assert "90% bootstrap intervals" in admin.text_content("#ci-note")
        if protocol == "paper":
            admin.screenshot(path="/tmp/review_390_admin.png", full_page=True)
            admin.screenshot(path=str(ARTIFACTS / "10-admin-phone-390.png"), full_page=True)
        assert problems == []
