"""The labeling page in a real browser (Debian's chromium driven by Playwright).

Open the page, rank with the keyboard including a tie, submit, reload, rank the rest (a K=2 item
by its A/B keys), export, and train the reward model on the export. Model text carrying
<script> and <img onerror> must show as text and run nothing. A screenshot goes to
test-artifacts/labeler.png.

CI needs: `apt-get install -y chromium` and `pip install playwright` (Playwright's own browser
download is not used).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from labeler_helpers import REPO, ServerProcess, write_candidates

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason="needs Debian chromium at /usr/bin/chromium (apt-get install -y chromium)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="needs the playwright package (pip install playwright)"),
]

XSS_SCRIPT = "<script>window.__xss = 1</script>Script answer"
XSS_IMG = '<img src=x onerror="window.__xss = 2">Image answer'
ITEMS = [
    {"id": "xss", "prompt": "Pick the best <b>answer</b>.", "completions": [XSS_SCRIPT, XSS_IMG, "Plain answer"]},
    {"id": "chat", "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
     "completions": ["Blue.", "Red is a colour.", "Colours are hard."]},
    {"id": "pair", "prompt": "Say hello.", "completions": ["Hello!", "Go away."]},
]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def server(tmp_path):
    guidelines = tmp_path / "guidelines.md"
    guidelines.write_text("# Guidelines\n\nPrefer **helpful** answers.\n\n<script>window.__xss = 3</script>\n")
    candidates = write_candidates(tmp_path / "candidates.jsonl", ITEMS)
    proc = ServerProcess([str(candidates), "--db", str(tmp_path / "labels.sqlite"), "--guidelines", str(guidelines)],
                         tmp_path / "server.log")
    yield proc
    proc.stop()


@pytest.fixture
def page(tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                        headless=True, args=FLAGS)
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def shown_indices(page) -> list[int]:
    return [int(i) for i in page.eval_on_selector_all("#responses .card", "cards => cards.map(c => c.dataset.index)")]


def wait_item(page, item_id: str | None = None) -> str:
    page.wait_for_selector("#responses .card")
    if item_id is not None:
        page.wait_for_function("id => document.getElementById('item-id').textContent === id", arg=item_id)
    return page.text_content("#item-id")


def test_rank_submit_reload_export_train(server, page, tmp_path):
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.url + "/")
    assert wait_item(page) == "xss"

    # Untrusted text is inert: shown literally, no element created, nothing executed.
    assert page.evaluate("window.__xss") is None
    assert page.locator("#responses img, #responses script, #prompt b").count() == 0
    assert XSS_IMG in page.text_content("#responses")
    assert "Pick the best <b>answer</b>." in page.text_content("#prompt")
    page.click("#guidelines-btn")
    assert page.locator("#guidelines strong").text_content() == "helpful"
    assert page.locator("#guidelines script").count() == 0 and page.evaluate("window.__xss") is None
    page.click("#guidelines-btn")

    # Keyboard: the first card has focus; 1, 1, 2 = a tie for first place, then Enter.
    assert not page.locator("#pair-choices").is_visible()  # A/B buttons only for K = 2
    order = shown_indices(page)
    page.locator("#responses .card").first.focus()
    assert page.locator("#submit").is_disabled()
    for key in ("1", "1"):
        page.keyboard.press(key)
    assert page.locator("#submit").is_disabled()  # blocked until every response has a rank
    page.keyboard.press("2")
    assert page.locator(".card .rank").all_text_contents().count("rank 1 (tie)") == 2
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "labeler.png"), full_page=True)
    page.keyboard.press("Enter")
    second = wait_item(page, "chat")

    # Reload: the same leased item comes back in the same order, and my progress counts 1.
    order_chat = shown_indices(page)
    page.reload()
    assert wait_item(page, second) == "chat" and shown_indices(page) == order_chat
    page.wait_for_function("() => document.getElementById('progress').textContent.startsWith('You: 1 done')")

    # Arrows move focus: rank the cards 3, 1, 2 top to bottom, visiting them out of order.
    page.locator("#responses .card").first.focus()
    page.keyboard.press("ArrowDown")
    page.keyboard.press("1")  # card 1 -> rank 1, focus moves to card 2
    page.keyboard.press("2")
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowUp")
    page.keyboard.press("3")
    page.keyboard.press("Enter")
    wait_item(page, "pair")

    # K = 2: A / B / Tie / Both bad; "b" says the second shown response is better.
    order_pair = shown_indices(page)
    assert page.locator("#pair-choices").is_visible()
    page.locator("#responses .card").first.focus()
    page.keyboard.press("b")
    page.keyboard.press("Enter")
    page.wait_for_selector("#done", state="visible")
    page.screenshot(path=str(ARTIFACTS / "labeler-done.png"), full_page=True)
    assert errors == []

    check_export(tmp_path, order, order_chat, order_pair)


def check_export(tmp_path: Path, order: list[int], order_chat: list[int], order_pair: list[int]) -> None:
    from data_tools.labeler.export import export_rankings
    from rlhf_stack.data import load_rankings

    out = tmp_path / "rankings.jsonl"
    summary = export_rankings(tmp_path / "labels.sqlite", out, pairs=tmp_path / "pairs.jsonl")
    assert summary["rows"] == 3 and summary["ties_dropped"] == 1
    rows = {r.id: r for r in load_rankings(out)}
    expected = {"xss": {order[0]: 1, order[1]: 1, order[2]: 2},
                "chat": {order_chat[0]: 3, order_chat[1]: 1, order_chat[2]: 2},
                "pair": {order_pair[0]: 2, order_pair[1]: 1}}
    for item_id, by_index in expected.items():
        assert rows[item_id].ranks == [by_index[i] for i in range(len(by_index))], item_id
        assert rows[item_id].extra["shown_order"] == {"xss": order, "chat": order_chat, "pair": order_pair}[item_id]
        assert rows[item_id].annotator == "local"
    assert rows["xss"].completions[0] == XSS_SCRIPT  # stored and exported verbatim
    train_reward_on(out, tmp_path)


def train_reward_on(rankings: Path, tmp_path: Path) -> None:
    """Stage 2 reads the export as is."""
    from rlhf_stack import reward
    from rlhf_stack.config import load_config

    tiny = REPO / "tests" / "fixtures" / "tiny-llama"
    cfg = load_config(reward.RewardConfig, {
        "model": {"name_or_path": str(tiny), "tuning": "full"},
        "data": {"path": str(rankings), "eval_fraction": 0.0},
        "train": {"epochs": 1, "batch_size": 2},
        "output_dir": str(tmp_path / "rm"),
    }, [])
    result = reward.train_reward(cfg)
    assert Path(result.checkpoint).is_dir()
    shutil.rmtree(tmp_path / "rm", ignore_errors=True)


def test_token_login_drag_not_rankable_and_going_back(tmp_path, page):
    from data_tools.labeler import store
    from data_tools.labeler.export import export_rankings
    from rlhf_stack.data import load_rankings

    db = tmp_path / "labels.sqlite"
    conn = store.connect(db)
    token = store.add_annotator(conn, "dana")
    conn.close()
    candidates = write_candidates(tmp_path / "candidates.jsonl", ITEMS[1:] + [dict(ITEMS[1], id="chat-2")])
    server = ServerProcess([str(candidates), "--db", str(db), "--require-tokens"], tmp_path / "server.log")
    try:
        page.goto(server.url + "/")
        page.wait_for_selector("#login", state="visible")  # no token, no work
        page.fill("#token", "wrong-token")
        page.click("#login-form button")
        page.wait_for_function("() => document.getElementById('status').textContent.includes('unknown or revoked token')")
        page.goto("about:blank")
        page.goto(server.url + "/#token=" + token)  # the link `annotators add` prints
        assert wait_item(page) == "chat" and "token" not in page.url
        assert page.text_content("#who") == "annotator: dana"

        # Drag the last response to the top: ranks follow the new order, no ties.
        before = shown_indices(page)
        page.locator("#responses .card").nth(2).drag_to(page.locator("#responses .card").nth(0))
        after = shown_indices(page)
        assert after == [before[2], before[0], before[1]]
        assert not page.locator("#submit").is_disabled()
        page.click("#submit")
        wait_item(page, "pair")

        page.click("#not-rankable")  # refused without a reason
        assert "reason" in page.text_content("#status")
        page.fill("#reason", "both answers are fine")
        page.click("#not-rankable")
        wait_item(page, "chat-2")

        # Going back: open the first item from the history, change the answer -> version 2.
        page.click("#history-btn")
        page.locator("#history-list button", has_text="Name a colour.").first.click()
        wait_item(page, "chat")
        assert shown_indices(page) == before  # the order it was first shown in (the stored shown order)
        dragged_ranks = {after[0]: 1, after[1]: 2, after[2]: 3}
        assert page.locator(".card .rank").all_text_contents() == [f"rank {dragged_ranks[i]}" for i in before]
        page.locator("#responses .card").first.focus()
        for key in ("3", "2", "1"):
            page.keyboard.press(key)
        page.keyboard.press("Enter")
        wait_item(page, "chat-2")
    finally:
        server.stop()
    summary = export_rankings(db, tmp_path / "rankings.jsonl")
    assert summary["rows"] == 1 and summary["not_rankable"] == 1
    (row,) = load_rankings(tmp_path / "rankings.jsonl")
    assert row.extra["version"] == 2 and row.annotator == "dana"
    assert [row.ranks[i] for i in before] == [3, 2, 1] and row.extra["shown_order"] == before
