"""The web UI: page contents as pure functions, then end to end on a real server.

The end-to-end tests serve a FastAPI app with the UI mounted by `mount_ui` (uvicorn on 127.0.0.1, in a
thread), over a `Chatbot` without the language model on the small products catalog. One drives the page with
headless Chromium (Debian's, through Playwright's Python package: ``scripts/install_browser.sh`` installs both
when missing) and writes a screenshot to ``tests/artifacts/ui.png``; one calls the page's named endpoints with
``gradio_client``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from chatbot.service import Chatbot
from chatbot.state import Recommendation, SessionState
from retrieval.catalog import Item, load_catalog
from retrieval.settings import Settings
from tests.conftest import DATA, live_server
from ui.app import UI_OWNER, beliefs_markdown, beliefs_of, card_html, current_cards, history_of, reaction_of

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ASK = "a rugged phone under $300"

# Gradio's queue calls pandas in ways pandas 3 deprecates; nothing of ours.
pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]


# -- what the page shows ---------------------------------------------------------------------------------


def _state() -> SessionState:
    state = SessionState(catalog="products", liked=["p-001"], disliked=["p-004"])
    state.constraints.include["category"] = ["phone"]
    state.constraints.exclude["brand"] = ["Apple"]
    state.constraints.ranges["price"] = (None, 300.0)
    state.recommended = [Recommendation(id="p-001", title="Nokia G42 5G", score=1.0, justification="Rugged <b>.",
                                        reaction="like"),
                         Recommendation(id="p-005", title="Ulefone Armor 24", score=0.9, justification="Tough.")]
    state.last_recommendations = ["p-001", "p-005"]
    return state


def test_beliefs_name_items_by_title_and_say_how_to_forget_them() -> None:
    beliefs = beliefs_of(_state(), load_catalog(DATA / "products.csv", "products"))
    assert [(b.group, b.label, b.kind, b.value) for b in beliefs] == [
        ("Likes", "Nokia G42 5G", "liked", "p-001"),
        ("Dislikes", "Apple iPhone 15", "disliked", "p-004"),
        ("Wants", "category: phone", "constraint", "category=phone"),
        ("Avoids", "brand: Apple", "constraint", "brand=Apple"),
        ("Limits", "price ≤ $300.00", "constraint", "price"),
    ]
    text = beliefs_markdown(beliefs)
    assert "**Likes:** Nokia G42 5G" in text and "**Limits:** price ≤ $300.00" in text
    assert "Nothing yet" in beliefs_markdown([])


def test_card_shows_facts_lists_justification_and_reaction() -> None:
    item = Item(id="p-001", title="Nokia G42 5G", text={"brand": "Nokia", "description": "A long text " * 10},
                lists={"tags": ["rugged", "budget"]}, numbers={"price": 249.0, "rating": 4.3})
    state = _state()
    rec = state.recommended[0]
    card = card_html(1, rec, item, reaction_of(state, rec))
    assert "Nokia G42 5G" in card and "$249.00" in card and "★ 4.3" in card and "Nokia" in card
    assert card.count('class="rc-chip"') == 2
    assert "Rugged &lt;b&gt;." in card  # escaped
    assert "You like this" in card
    assert "A long text" not in card  # long free text stays out of the card
    movie = Item(id="m", title="Heat", lists={"genre": ["crime"], "director": ["Michael Mann"]}, numbers={"year": 1995})
    assert "1995" in card_html(1, rec, movie) and "director: Michael Mann" in card_html(1, rec, movie)
    assert "You like this" not in card_html(1, rec, movie)


def test_cards_show_the_current_belief_not_the_first_reaction() -> None:
    state = _state()
    liked, other = state.recommended
    assert reaction_of(state, liked) == "like" and reaction_of(state, other) is None
    state.liked.remove("p-001")  # the belief was removed in the panel
    assert reaction_of(state, liked) is None
    state.seen.append("p-005")
    assert reaction_of(state, other) == "seen"


def test_history_and_cards_come_from_the_session() -> None:
    state = _state()
    state.messages = []
    assert history_of(None) == [] and current_cards(None) == []
    assert [r.id for r in current_cards(state)] == ["p-001", "p-005"]


def test_importing_the_ui_module_loads_nothing_heavy() -> None:
    code = "import sys, ui.app; print(sorted(m for m in ('gradio', 'torch', 'chromadb') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


# -- a real server ---------------------------------------------------------------------------------------


def serving(app: Any) -> AbstractContextManager[str]:
    """Serve ``app`` on a free loopback port (the shared test server helper)."""
    return live_server(app, wait_ready=False)


@pytest.fixture
def bot(library, products, data_dir: Path) -> Iterator[Chatbot]:  # noqa: ANN001
    chatbot = Chatbot(Settings(data_dir=data_dir, default_catalog="products"), library=library, use_lm=False)
    yield chatbot
    chatbot.close()


def _ui_app(get_chatbot: Callable[[], Chatbot]) -> Any:
    from fastapi import FastAPI

    from ui.app import mount_ui

    app = FastAPI()

    @app.get("/v1/ping")
    def ping() -> dict[str, bool]:
        return {"ok": True}

    mount_ui(app, get_chatbot)
    return app


@pytest.fixture
def ui_url(bot: Chatbot) -> Iterator[str]:
    with serving(_ui_app(lambda: bot)) as url:
        yield url


class SlowTokens(Chatbot):
    """The real service, handing out its reply in slower pieces so that streaming shows in any test run."""

    def send(self, session_id: str, text: str, owner: str | None = None,
             on_token: Callable[[str], None] | None = None) -> Any:
        def slow(piece: str) -> None:
            time.sleep(0.05)
            if on_token is not None:
                on_token(piece)

        return super().send(session_id, text, owner, on_token=slow)


def _text(message: dict[str, Any]) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


@pytest.mark.slow
def test_gradio_client_calls_the_named_endpoints(library, products, data_dir: Path) -> None:  # noqa: ANN001
    from gradio_client import Client

    bot = SlowTokens(Settings(data_dir=data_dir, default_catalog="products"), library=library, use_lm=False)
    with serving(_ui_app(lambda: bot)) as url:
        client = Client(f"{url}/", verbose=False)
        job = client.submit(ASK, None, "products", api_name="/respond")
        cleared, history, session_id = job.result(timeout=60)
        streamed = [_text(out[1][-1]) for out in job.outputs() if out[1]]

        assert cleared == ""
        assert [m["role"] for m in history] == ["user", "assistant"]
        assert _text(history[0]) == ASK
        state = bot.get_session(session_id, UI_OWNER)
        assert state.catalog == "products" and state.last_recommendations
        final = _text(history[-1])
        assert final == state.messages[-1].text
        assert state.recommendation(state.last_recommendations[0]).title in final
        growing = [t for t in streamed if t != "…"]
        assert len(set(growing)) >= 3, streamed  # the reply arrived in pieces
        assert all(final.startswith(t.rstrip()) for t in growing)

        first = state.last_recommendations[0]
        assert client.predict(session_id, first, "like", api_name="/feedback")["liked"] == [first]
        restored = client.predict(session_id, api_name="/restore")
        assert restored[2] == session_id and len(restored[1]) == 2
        assert state.recommendation(first).title in restored[3] and "You like this" in restored[3]
        assert "**Likes:**" in restored[-2]
        client.predict(session_id, f"liked:{first}", api_name="/forget")
        assert bot.get_session(session_id).liked == []

        # a second turn goes to the same session; a session of another owner is not opened
        _, history, same = client.predict("thanks!", session_id, "products", api_name="/respond")
        assert same == session_id and len(history) == 4
        other = bot.create_session("products", owner="someone-else")
        _, history, fresh = client.predict("thanks!", other.id, "products", api_name="/respond")
        assert fresh != other.id and len(history) == 2

        # a message over the limit is refused and left in the text box; no session is started for it
        too_long = "phone " * 1000
        sessions = len(bot.list_sessions())
        assert client.predict(too_long, None, "products", api_name="/respond")[0] == too_long
        assert len(bot.list_sessions()) == sessions
    bot.close()


@pytest.mark.slow
def test_the_page_says_when_the_service_is_not_ready() -> None:
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    def starting() -> Chatbot:
        raise RuntimeError("the service is starting")

    with serving(_ui_app(starting)) as url:
        client = Client(f"{url}/", verbose=False)
        restored = client.predict("kept-id", api_name="/restore")
        assert restored[2] == "kept-id" and restored[1] == []  # the browser keeps its session for later
        with pytest.raises(AppError, match="not ready yet"):
            client.predict("hello", None, None, api_name="/respond")


@pytest.mark.slow
def test_create_app_serves_the_ui_next_to_the_api(library, products, data_dir: Path) -> None:  # noqa: ANN001
    api = pytest.importorskip("chatbot.api")
    if not hasattr(api, "create_app"):
        pytest.skip("chatbot.api.create_app is not there yet")
    import httpx

    settings = Settings(data_dir=data_dir, default_catalog="products")
    app = api.create_app(lambda: Chatbot(settings, library=library, use_lm=False), settings)
    with serving(app) as url:
        page = httpx.get(f"{url}/", timeout=30)
        assert page.status_code == 200 and "gradio" in page.text.lower()
        assert httpx.get(f"{url}/gradio_api/info", timeout=30).json()["named_endpoints"].keys() >= {
            "/respond", "/restore", "/feedback", "/forget", "/new_conversation"}
        assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200


# -- headless Chromium -----------------------------------------------------------------------------------


def _browser_ready() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return CHROMIUM.is_file()


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium and Playwright's driver, installed by ``scripts/install_browser.sh`` when missing."""
    if not _browser_ready():
        script = ROOT / "scripts" / "install_browser.sh"
        done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900,
                              env={**os.environ, "PYTHON": sys.executable})
        if done.returncode != 0 or not _browser_ready():
            pytest.skip(f"Chromium could not be installed ({script} exit {done.returncode}): "
                        f"{(done.stdout + done.stderr)[-500:]}")
    return CHROMIUM


@pytest.mark.slow
def test_browser_conversation_feedback_and_reload(chromium: Path, ui_url: str, bot: Chatbot,
                                                  tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(chromium), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000})
        try:
            page = context.new_page()
            page.set_default_timeout(30_000)
            expect.set_options(timeout=30_000)
            page.goto(f"{ui_url}/")
            expect(page.locator("#catalog input")).to_have_value("products")
            expect(page.locator("#beliefs")).to_contain_text("Nothing yet")

            # one turn: the reply streams into the chat and the cards appear
            page.locator("#message textarea").fill(ASK)
            page.locator("#send").click()
            expect(page.locator("#card-0-body .rc-title")).to_be_visible()
            expect(page.locator("#chat")).to_contain_text("Here are some picks")
            expect(page.locator("#message textarea")).to_have_value("")
            (state,) = bot.list_sessions(owner=UI_OWNER)
            recs = [state.recommendation(i) for i in state.last_recommendations]
            assert len(recs) >= 2, "the products catalog should give at least two rugged phones under $300"
            for slot, rec in enumerate(recs):
                card = page.locator(f"#card-{slot}-body")
                expect(card.locator(".rc-title")).to_have_text(rec.title)
                expect(card.locator(".rc-why")).to_have_text(rec.justification)
                expect(page.locator("#chat")).to_contain_text(rec.title)
            for slot in range(len(recs), 3):
                expect(page.locator(f"#card-{slot}")).to_be_hidden()

            # feedback: like the first card, dislike the second; the beliefs panel follows
            page.locator("#card-0-like").click()
            expect(page.locator("#beliefs")).to_contain_text(f"Likes: {recs[0].title}")
            expect(page.locator("#card-0-body")).to_contain_text("You like this")
            page.locator("#card-1-dislike").click()
            expect(page.locator("#beliefs")).to_contain_text(f"Dislikes: {recs[1].title}")
            state = bot.get_session(state.id)
            assert state.liked == [recs[0].id] and state.disliked == [recs[1].id]

            # remove a wrong belief
            page.locator("#belief-pick input").click()
            page.get_by_role("option", name=f"Dislikes: {recs[1].title}").click()
            page.locator("#forget").click()
            expect(page.locator("#beliefs")).not_to_contain_text("Dislikes")
            expect(page.locator("#card-1-body")).not_to_contain_text("Not for you")
            assert bot.get_session(state.id).disliked == []

            # a reload restores the chat, the cards and the beliefs from the session id kept in the browser
            page.reload()
            expect(page.locator("#chat")).to_contain_text(ASK)
            expect(page.locator("#chat")).to_contain_text("Here are some picks")
            expect(page.locator("#card-0-body .rc-title")).to_have_text(recs[0].title)
            expect(page.locator("#card-0-body")).to_contain_text("You like this")
            expect(page.locator("#beliefs")).to_contain_text(f"Likes: {recs[0].title}")
            page.wait_for_timeout(300)  # let the layout settle before the picture
            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / "ui.png"
            page.screenshot(path=str(shot), full_page=True)
            shutil.copyfile(shot, "/tmp/ui.png")

            # a new conversation clears the page, also after a reload
            page.locator("#new-conversation").click()
            expect(page.locator("#card-0")).to_be_hidden()
            expect(page.locator("#beliefs")).to_contain_text("Nothing yet")
            expect(page.locator("#chat")).not_to_contain_text(ASK)
            page.reload()
            expect(page.locator("#catalog input")).to_have_value("products")
            expect(page.locator("#beliefs")).to_contain_text("Nothing yet")
            expect(page.locator("#chat")).not_to_contain_text(ASK)
            assert re.search(r"\S", page.locator("#chat").inner_text())  # the placeholder, not an error
        finally:
            context.close()
