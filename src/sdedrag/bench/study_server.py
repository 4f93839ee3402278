"""The study's web app: a small stdlib HTTP server with plain HTML forms.

Each page shows one case (input with its drag arrows) and two methods' results in random order, labelled
only "Left" and "Right"; images and the vote form are addressed by random one-off tokens, so nothing in the
page names a method. A rater is a cookie (random, or the name given once as ``/?rater=NAME``); each rater
sees every comparison at most once, and votes go straight to SQLite, so they survive restarts.

Open questions (and their tokens) are held for at most ``ttl`` seconds since last shown and ``max_open``
at a time, oldest dropped first, so visitors without a cookie cannot grow the server's memory; request
bodies are bounded and must declare a valid Content-Length, and slow clients time out.
"""

from __future__ import annotations

import html
import io
import random
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from PIL import Image

from sdedrag.bench.study import QUESTION, Comparison, Study, VoteStore

COOKIE = "sdedrag_rater"
RATER_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MAX_FORM_BYTES = 4096
MAX_OPEN_QUESTIONS = 10_000
QUESTION_TTL = 6 * 3600.0  # seconds
REQUEST_TIMEOUT = 30.0  # seconds a client may take to send a request
LISTEN_BACKLOG = 1024
NOT_RECORDED = "That vote was not recorded (already answered, or the page was from before a restart). "


@dataclass(frozen=True)
class Shown:
    """A comparison as shown to a rater: which method is on the left."""

    rater: str
    comparison: Comparison
    left: str

    @property
    def right(self) -> str:
        a, b = self.comparison.pair
        return b if self.left == a else a


class StudyApp:
    """The study's state behind the HTTP handler: each rater's open question and the images it shows.

    A rater has at most one open question; reloading the page shows it again (same order), so a rater
    cannot reshuffle comparisons by reloading. Open questions last ``ttl`` seconds since last shown, and
    at most ``max_open`` are held (the least recently shown go first).
    """

    def __init__(
        self,
        study: Study,
        store: VoteStore,
        max_open: int = MAX_OPEN_QUESTIONS,
        ttl: float = QUESTION_TTL,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.study, self.store = study, store
        self.max_open, self.ttl, self.clock = max_open, ttl, clock
        self.random = random.Random()
        self._lock = threading.Lock()
        # rater -> (form token, shown, images), least recently shown first, and when each was last shown
        self._open: OrderedDict[str, tuple[str, Shown, dict[str, str]]] = OrderedDict()
        self._shown_at: dict[str, float] = {}
        self._images: dict[str, tuple[str, str]] = {}  # image token -> ("input" or a method, case id)
        self._arrows: dict[str, bytes] = {}

    def _close(self, rater: str) -> tuple[str, Shown, dict[str, str]]:
        """Forget the rater's open question and its image tokens (the lock is held)."""
        question = self._open.pop(rater)
        del self._shown_at[rater]
        for image_token in question[2].values():
            self._images.pop(image_token, None)
        return question

    def _expire(self, now: float) -> None:
        """Drop questions not shown for ``ttl`` seconds, and the oldest beyond ``max_open`` (the lock is held)."""
        while self._open:
            oldest = next(iter(self._open))
            if len(self._open) <= self.max_open and now - self._shown_at[oldest] <= self.ttl:
                break
            self._close(oldest)

    def open_questions(self) -> tuple[int, int]:
        """How many questions and image tokens are held."""
        with self._lock:
            self._expire(self.clock())
            return len(self._open), len(self._images)

    def next_question(self, rater: str) -> tuple[str, Shown, dict[str, str]] | None:
        """The rater's open question, or a new one they have not answered (with form and image tokens);
        None when they have answered everything."""
        with self._lock:
            now = self.clock()
            self._expire(now)
            if rater in self._open:
                self._open.move_to_end(rater)
                self._shown_at[rater] = now
                return self._open[rater]
        answered = self.store.answered(rater)
        remaining = [c for c in self.study.comparisons if c not in answered]
        if not remaining:
            return None
        with self._lock:
            comparison = self.random.choice(remaining)
            shown = Shown(rater, comparison, self.random.choice(comparison.pair))
            images = {}
            for role, source in (("input", "input"), ("left", shown.left), ("right", shown.right)):
                images[role] = secrets.token_urlsafe(16)
                self._images[images[role]] = (source, comparison.case_id)
            self._open[rater] = (secrets.token_urlsafe(16), shown, images)
            self._shown_at[rater] = self.clock()
            question = self._open[rater]
            self._expire(self._shown_at[rater])
            return question

    def vote(self, rater: str, token: str, choice: str) -> bool:
        """Record the rater's choice ('left' or 'right') on their open question ``token``; False if that is
        not their open question (e.g. a page from before a restart) or they already voted on it."""
        with self._lock:
            self._expire(self.clock())
            question = self._open.get(rater)
            if question is None or question[0] != token or choice not in ("left", "right"):
                return False
            _, shown, _ = self._close(rater)
        winner = shown.left if choice == "left" else shown.right
        return self.store.add(rater, shown.comparison, winner, shown.left)

    def image(self, token: str) -> bytes | None:
        """PNG bytes of an image token: the case's input with arrows, or a method's result."""
        with self._lock:
            entry = self._images.get(token)
        if entry is None:
            return None
        source, case_id = entry
        if source == "input":
            if case_id not in self._arrows:
                self._arrows[case_id] = _png(self.study.case_input(case_id).with_arrows())
            return self._arrows[case_id]
        return self.study.result_path(source, case_id).read_bytes()

    def progress(self, rater: str) -> tuple[int, int]:
        return len(self.store.answered(rater) & set(self.study.comparisons)), len(self.study.comparisons)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sdedrag user study</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em auto; max-width: 1100px; }}
.row {{ display: flex; gap: 1em; align-items: flex-start; }}
figure {{ flex: 1; margin: 0; text-align: center; }}
img {{ width: 100%; border: 1px solid #ccc; }}
.input {{ max-width: 50%; }}
button {{ font-size: 1.1em; padding: 0.4em 1.5em; margin-top: 0.5em; }}
.note {{ color: #555; }}
</style></head><body>
{body}
</body></html>
"""


def question_page(token: str, shown: Shown, images: dict[str, str], progress: tuple[int, int], note: str) -> str:
    done, total = progress
    body = f"""<p class="note">{html.escape(note)}Comparison {done + 1} of {total}.</p>
<h2>{html.escape(QUESTION)}</h2>
<p>The arrows go from each handle point (red) to its target (blue); only the bright area may change.</p>
<div class="row"><figure class="input"><img src="/image/{images['input']}" alt="input with drag arrows"><figcaption>Input and drag</figcaption></figure></div>
<form method="post" action="/vote"><input type="hidden" name="token" value="{token}">
<div class="row">
<figure><img src="/image/{images['left']}" alt="left result"><br><button name="choice" value="left">Left is better</button></figure>
<figure><img src="/image/{images['right']}" alt="right result"><br><button name="choice" value="right">Right is better</button></figure>
</div></form>"""
    return PAGE.format(body=body)


def done_page(total: int) -> str:
    return PAGE.format(body=f"<h2>Thank you!</h2><p>You have answered all {total} comparisons.</p>")


class StudyHandler(BaseHTTPRequestHandler):
    """GET / (next question), GET /image/TOKEN, POST /vote."""

    app: StudyApp  # set on the subclass made by make_server
    server_version = "sdedrag-study"
    timeout = REQUEST_TIMEOUT

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass  # keep the console for the URL and errors

    def _rater(self) -> tuple[str, bool]:
        """The rater id from the cookie, or a new random one (and whether it is new)."""
        cookie = SimpleCookie(self.headers.get("Cookie", ""))
        if COOKIE in cookie and RATER_NAME.match(cookie[COOKIE].value):
            return cookie[COOKIE].value, False
        return secrets.token_hex(8), True

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str, rater: str | None = None) -> None:
        headers = {"Location": location}
        if rater is not None:
            headers["Set-Cookie"] = f"{COOKIE}={rater}; Path=/; Max-Age=31536000; SameSite=Lax; HttpOnly"
        self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", headers)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlsplit(self.path)
        if url.path.startswith("/image/"):
            data = self.app.image(url.path.removeprefix("/image/"))
            if data is None:
                self._send(HTTPStatus.NOT_FOUND, b"unknown image", "text/plain")
            else:
                self._send(HTTPStatus.OK, data, "image/png")
            return
        if url.path != "/":
            self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")
            return
        query = parse_qs(url.query)
        name = query.get("rater", [""])[0]
        if name:
            if not RATER_NAME.match(name):
                self._send(HTTPStatus.BAD_REQUEST, b"rater names: 1-64 letters, digits, _ . @ -", "text/plain")
                return
            self._redirect("/", rater=name)
            return
        rater, new = self._rater()
        note = NOT_RECORDED if "unrecorded" in query else ""
        question = self.app.next_question(rater)
        if question is None:
            page = done_page(len(self.app.study.comparisons))
        else:
            page = question_page(*question, self.app.progress(rater), note)
        headers = {"Set-Cookie": f"{COOKIE}={rater}; Path=/; Max-Age=31536000; SameSite=Lax; HttpOnly"} if new else None
        self._send(HTTPStatus.OK, page.encode(), "text/html; charset=utf-8", headers)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        if urlsplit(self.path).path != "/vote":
            self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")
            return
        declared = self.headers.get("Content-Length", "")
        if not (declared.isascii() and declared.isdigit()):
            self.close_connection = True  # the body's end is unknown
            self._send(HTTPStatus.BAD_REQUEST, b"a vote needs a valid Content-Length", "text/plain")
            return
        length = int(declared)
        if length > MAX_FORM_BYTES:
            self.close_connection = True
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b"form too large", "text/plain")
            return
        form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        rater, _ = self._rater()
        recorded = self.app.vote(rater, form.get("token", [""])[0], form.get("choice", [""])[0])
        self._redirect("/" if recorded else "/?unrecorded=1")


class StudyServer(ThreadingHTTPServer):
    """A threading HTTP server with a listen backlog for bursts of votes (socketserver's default is 5)."""

    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True


def make_server(app: StudyApp, host: str = "127.0.0.1", port: int = 7860) -> ThreadingHTTPServer:
    """An HTTP server for ``app`` (not started: call ``serve_forever``); port 0 picks a free port."""
    handler = type("BoundStudyHandler", (StudyHandler,), {"app": app})
    return StudyServer((host, port), handler)
