"""A real OpenAI-compatible HTTP server with scripted replies and fault injection, standing in for the judge.

In tests: ``with JudgeServer(reply_fn) as server: ... server.url ...`` (uvicorn in a background thread on
127.0.0.1). Standalone, for tests that run ``mpo run`` in a subprocess:
``python tests/support/judge_server.py --port P --rule keyword:WORD``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Self

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

ReplyFn = Callable[[str, dict[str, Any]], str]

# Phrases of the shipped prompts (prompts/_common/*.md and the task folders) that tell the prompt kinds apart.
PRESCREEN_MARKERS = ("Is this score trustworthy",)
ANALYZE_MARKERS = ("Write a critique of at most", "senior instructor's review", "point out scores that are")
REFINE_MARKERS = ("write an improved rubric", "Revised rubric, with a criterion added")
GUIDELINE_REFINE_MARKERS = ("Rewrite the grading guidelines",)
MERGE_MARKERS = ("Merge them into one rubric", "One combined rubric")
PLAN_MARKERS = ("prepare a grading plan",)
JSON_MARKERS = ("Reply with JSON only",)
ITEM_MARKERS = ("Criterion under review",)
AUDIT_MARKERS = ("Audit the meta-judge's rubric change",)
LISTWISE_MARKERS = ("Score each of the", "Task: Describe your favourite season.")
PROPOSE_MARKERS = ("You keep the grading checklist", "New checklist lines")
PERSISTENT_MARKERS = (
    "Write the grading checklist for one prompt",
    "Should cities ban cars from their centres",
)
_LISTED = re.compile(r'<response id="(c\d+)">(.*?)</response>', re.DOTALL)
GARBAGE_REPLY = "Well, this response is certainly something. I have thoughts about it but no verdict."
TRUNCATED_REPLY = "The response starts well and keeps a clear structure, but the second half of the"
# Besides these, any HTTP status code as a string ("500", "429", "401", ...) is a fault.
FAULTS = ("timeout", "trickle", "garbage", "empty", "truncated")
_ITEM_RANGE = re.compile(r"from (-?\d+) to (-?\d+)")
_JSON_ITEM = re.compile(r"^(\d+)\. .*\(score from (-?\d+) to (-?\d+)\)$", re.MULTILINE)


def count_e(prompt_text: str, request_json: dict[str, Any]) -> str:
    """A judge the tiny policy can learn to please: the number of letters "e" in the response, up to 5."""
    response = re.findall(r"<response>(.*?)</response>", prompt_text, re.DOTALL)[-1]
    return f"Reason: counted the letter e.\nScore: {min(5, response.count('e'))}"


def _has(text: str, markers: tuple[str, ...]) -> bool:
    return any(marker in text for marker in markers)


class KeywordRule:
    """The scripted judge every test shares; its scoring rule is known to the tests.

    A judge prompt's score is the number of occurrences of `word` (whole word, any case) in the last
    ``<response>...</response>`` block, clipped to the range the prompt asks for: 0-5 for a holistic prompt
    (replied as ``<score>N</score>``), the criterion's range for a per-criterion prompt, each criterion's range
    for a JSON prompt, 0-10 for each `<response id="cN">` of a listwise prompt (as JSON). A math plan prompt
    gets a short plan. Meta prompts get fixed replies: prescreen says "flawed" when the score shown is above 2,
    an analysis names the keyword, a refine or merge prompt gets a two-criterion rubric (or, for guidelines, a
    paragraph) whose wording changes with every call; a prompt's persistent items are three fixed lines (keyword
    +2, on topic +1, rambling -1) and a proposal two new lines (keyword +1, capitals -1) named by its round.
    """

    def __init__(self, word: str) -> None:
        self.word = word
        self._pattern = re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE)
        self._rewrites = 0
        self._lock = threading.Lock()

    def count(self, prompt_text: str) -> int | None:
        blocks = re.findall(r"<response>(.*?)</response>", prompt_text, re.DOTALL)
        if not blocks:
            return None
        return len(self._pattern.findall(blocks[-1]))

    def score(self, prompt_text: str) -> int | None:
        found = self.count(prompt_text)
        return None if found is None else min(5, found)

    def _next_revision(self) -> int:
        with self._lock:
            self._rewrites += 1
            return self._rewrites

    def __call__(self, prompt_text: str, request_json: dict[str, Any]) -> str:
        if _has(prompt_text, LISTWISE_MARKERS):
            # The completion variant shows a worked example first: only the responses after it are graded.
            parts = prompt_text.split("Scores:")
            graded = parts[-2] if len(parts) >= 3 else prompt_text
            scores = [
                {
                    "id": ident,
                    "explanation": "counted the keyword",
                    "score": min(10, len(self._pattern.findall(text))),
                }
                for ident, text in _LISTED.findall(graded)
            ]
            return json.dumps({"scores": scores})
        if _has(prompt_text, PERSISTENT_MARKERS):
            return (
                f"+2 | Uses the keyword | The response uses the word '{self.word}' where it fits the task.\n"
                "+1 | Stays on topic | The response answers the prompt it was given and nothing else.\n"
                "-1 | Rambles | The response repeats itself or pads its length without adding content."
            )
        if _has(prompt_text, PROPOSE_MARKERS):
            n = self._next_revision()
            return (
                f"+1 | Keyword again, round {n} | The response repeats the word '{self.word}' more than once.\n"
                f"-1 | Shouting, round {n} | The response writes whole sentences in capital letters."
            )
        if _has(prompt_text, PRESCREEN_MARKERS):
            shown = re.search(r"score:? (-?\d+(?:\.\d+)?)", prompt_text, re.IGNORECASE)
            flawed = shown is not None and float(shown.group(1)) > 2
            return f"The score {'looks inflated' if flawed else 'is reasonable'}.\nVerdict: {'flawed' if flawed else 'fine'}"
        if _has(prompt_text, AUDIT_MARKERS):
            # The scripted rewrite rewards the keyword itself: a loophole an audit must catch.
            proposal = prompt_text.split("Proposed rubric", 1)[-1].split("What changed", 1)[0]
            loophole = f"'{self.word}'" in proposal
            return (
                "Supported: yes, the analyses point at keyword stuffing.\nFixes: partly.\n"
                f"Loophole: {'yes, it rewards using the word itself' if loophole else 'no'}.\n"
                f"Verdict: {'reject' if loophole else 'accept'}\n"
                f"Reason: {'the new criterion pays for a word, not for quality' if loophole else 'sound change'}."
            )
        if _has(prompt_text, GUIDELINE_REFINE_MARKERS):
            n = self._next_revision()
            return (
                f"Check every step of the solution against the reference, revision {n}. Give full marks only "
                "when the final answer and the reasoning are both right."
            )
        if _has(prompt_text, REFINE_MARKERS) or _has(prompt_text, MERGE_MARKERS):
            n = self._next_revision()
            return (
                f"Criterion 1: The response uses the word '{self.word}' naturally and often, revision {n}. "
                "(0-5 points)\n"
                f"Criterion 2: The response stays on topic and reads clearly, revision {n}. (0-3 points)"
            )
        if _has(prompt_text, ANALYZE_MARKERS):
            return (
                f"The high-scoring responses repeat '{self.word}' without saying much; the rubric rewards "
                "the word itself rather than quality. The next rubric should also ask for relevance."
            )
        if _has(prompt_text, PLAN_MARKERS):
            return "Plan: check the key steps against the reference solution, then the final boxed answer."
        found = self.count(prompt_text)
        if found is None:
            return "I cannot find a <response> block to grade in this prompt."
        if _has(prompt_text, JSON_MARKERS):
            items = [
                {
                    "criterion": int(n),
                    "rationale": f"uses the keyword {found} time(s)",
                    "score": max(int(low), min(int(high), found)),
                }
                for n, low, high in _JSON_ITEM.findall(prompt_text)
            ]
            return json.dumps({"items": items})
        if _has(prompt_text, ITEM_MARKERS):
            ranges = _ITEM_RANGE.findall(prompt_text) or [("0", "5")]
            low, high = (int(x) for x in ranges[-1])
            return (
                f"Reason: the response uses the keyword {found} time(s).\nScore: {max(low, min(high, found))}"
            )
        score = min(5, found)
        return f"The response uses the keyword {score} time(s).\n<score>{score}</score>"


def prompt_text_of(request_json: dict[str, Any]) -> str:
    """The text a reply rule sees: chat message contents joined by blank lines, or the completion prompt."""
    if "messages" in request_json:
        parts = []
        for message in request_json["messages"]:
            content = message.get("content") or ""
            if isinstance(content, list):  # content parts: keep the text ones
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            parts.append(content)
        return "\n\n".join(parts)
    prompt = request_json.get("prompt", "")
    return prompt[0] if isinstance(prompt, list) and prompt else str(prompt)


def _error(status: int, message: str) -> JSONResponse:
    kinds = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_exceeded"}
    body = {
        "error": {
            "message": message,
            "type": kinds.get(status, "server_error"),
            "param": None,
            "code": status,
        }
    }
    return JSONResponse(status_code=status, content=body)


class JudgeServer:
    """The server and its controls: `url`, `inject(*faults)`, `requests`, `counts`, `max_in_flight`.

    Faults are consumed one per request, in arrival order: "timeout" (hold the request `timeout_sleep`
    seconds), "trickle" (send the body one space every 0.1 s for `timeout_sleep` seconds: a stall that
    read timeouts do not catch), "garbage" (a reply with no score), "empty" (empty content), "truncated"
    (cut mid-sentence, finish_reason "length"), or an HTTP status such as "500", "429", "401".
    `fail_randomly(rate, kinds)` makes each request without a queued fault fail with probability `rate`.
    With `api_key` set, requests without that bearer token get 401. With `concurrency`, at most that many
    requests are served at once (each for `latency` seconds), the others queue: a rate-limited endpoint.
    """

    def __init__(
        self,
        reply_fn: ReplyFn | None = None,
        latency: float = 0.0,
        *,
        api_key: str | None = None,
        timeout_sleep: float = 30.0,
        port: int = 0,
        concurrency: int | None = None,
    ) -> None:
        self.reply_fn = reply_fn or KeywordRule("good")
        self.latency = latency
        self.api_key = api_key
        self.timeout_sleep = timeout_sleep
        self.concurrency = concurrency
        self._slots: asyncio.Semaphore | None = None
        self.counts: Counter[str] = Counter()  # "requests", "chat", "completion", and one per fault served
        self.in_flight = 0
        self.max_in_flight = 0
        self._requests: list[dict[str, Any]] = []
        self._faults: deque[str] = deque()
        self._random_faults: tuple[float, tuple[str, ...], random.Random] | None = None
        self._lock = threading.Lock()
        self._port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self.app = self._build_app()

    # -- controls -------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._requests)

    def inject(self, *faults: str) -> None:
        for fault in faults:
            _check_fault(fault)
        with self._lock:
            self._faults.extend(faults)

    def fail_randomly(self, rate: float, kinds: tuple[str, ...], seed: int = 0) -> None:
        """From now on a request without a queued fault gets one of `kinds` with probability `rate` (0 stops)."""
        for kind in kinds:
            _check_fault(kind)
        with self._lock:
            self._random_faults = (rate, tuple(kinds), random.Random(seed)) if rate > 0 else None

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._faults.clear()
            self._random_faults = None
            self.counts.clear()
            self.max_in_flight = self.in_flight

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> Self:
        # Let uvicorn bind the socket itself: handing it a pre-bound socket made every request ~45 ms slower.
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self._port,
            log_level="warning",
            timeout_graceful_shutdown=1,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True, name="judge-server")
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test judge server did not start")
            time.sleep(0.01)
        self._port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)  # wake held "timeout" requests
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- the app --------------------------------------------------------------------------------------------
    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/health")
        async def health() -> dict[str, str]:
            return {"status": "ok"}

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> JSONResponse:
            return await self._handle(request, chat=True)

        @app.post("/v1/completions")
        async def completions(request: Request) -> JSONResponse:
            return await self._handle(request, chat=False)

        return app

    async def _handle(self, request: Request, *, chat: bool) -> JSONResponse:
        body = await request.json()
        if self._stopping is None:
            self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
            self._slots = asyncio.Semaphore(self.concurrency) if self.concurrency else None
        with self._lock:
            self._requests.append(body)
            self.counts["requests"] += 1
            self.counts["chat" if chat else "completion"] += 1
            fault = self._faults.popleft() if self._faults else None
            if fault is None and self._random_faults is not None:
                rate, kinds, draw = self._random_faults
                fault = draw.choice(kinds) if draw.random() < rate else None
            if fault:
                self.counts[fault] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
                return _error(401, "Incorrect API key provided.")
            if self._slots is not None:
                async with self._slots:
                    await asyncio.sleep(self.latency)
            elif self.latency:
                await asyncio.sleep(self.latency)
            if fault == "timeout":
                try:  # hold the request, but let shutdown end it at once
                    await asyncio.wait_for(self._stopping.wait(), self.timeout_sleep)
                except TimeoutError:
                    pass
                return _error(504, "held too long")
            if fault == "trickle":
                return StreamingResponse(self._trickle(body, chat=chat), media_type="application/json")
            if fault and fault.isdigit():
                return _error(int(fault), f"injected HTTP {fault}")
            finish_reason = "stop"
            if fault == "garbage":
                text = GARBAGE_REPLY
            elif fault == "empty":
                text = ""
            elif fault == "truncated":
                text, finish_reason = TRUNCATED_REPLY, "length"
            else:
                text = self.reply_fn(prompt_text_of(body), body)
            return JSONResponse(_response_body(body, text, finish_reason, chat=chat))
        finally:
            with self._lock:
                self.in_flight -= 1

    async def _trickle(self, body: dict[str, Any], *, chat: bool) -> AsyncIterator[bytes]:
        assert self._stopping is not None
        deadline = time.monotonic() + self.timeout_sleep
        while time.monotonic() < deadline and not self._stopping.is_set():
            yield b" "  # JSON allows leading whitespace: every read gets data, so no read timeout fires
            await asyncio.sleep(0.1)
        yield json.dumps(_response_body(body, "late", "stop", chat=chat)).encode()


def _check_fault(fault: str) -> None:
    if fault not in FAULTS and not (fault.isdigit() and len(fault) == 3):
        raise ValueError(f"unknown fault {fault!r}; use one of {FAULTS} or an HTTP status like '500'")


def _response_body(
    request_json: dict[str, Any], text: str, finish_reason: str, *, chat: bool
) -> dict[str, Any]:
    prompt_tokens = len(prompt_text_of(request_json).split())
    completion_tokens = len(text.split())
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason, "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": request_json.get("model", "test-judge"),
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Scripted OpenAI-compatible judge server for tests.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rule", default="keyword:good", help="keyword:WORD (the only rule so far)")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=None, help="requests served at once; others queue")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="share of requests that fail")
    parser.add_argument(
        "--faults", default="500,429,timeout,garbage,empty,truncated", help="kinds, comma-separated"
    )
    parser.add_argument("--timeout-sleep", type=float, default=30.0, help="how long a 'timeout' fault holds")
    args = parser.parse_args()
    kind, _, word = args.rule.partition(":")
    if kind != "keyword" or not word:
        parser.error(f"--rule must be keyword:WORD, got {args.rule!r}")
    server = JudgeServer(
        KeywordRule(word),
        latency=args.latency,
        port=args.port,
        timeout_sleep=args.timeout_sleep,
        concurrency=args.concurrency,
    )
    if args.fault_rate:
        server.fail_randomly(args.fault_rate, tuple(args.faults.split(",")))
    uvicorn.run(
        server.app, host="127.0.0.1", port=args.port, log_level="warning", timeout_graceful_shutdown=1
    )


if __name__ == "__main__":
    main()
