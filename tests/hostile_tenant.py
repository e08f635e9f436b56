"""The hostile-tenant property, against a real server: account A's worst never reaches account B.

`Hostile` sends account A's examples (tests/hostile_strategies.py) as raw bytes over REST and
over one /v1/ingest socket, and checks every answer against the contract: a 202 or a 4xx with
`{"error": {"code", "message"}}` over REST (never a 5xx, never a dropped connection), an `ack`
or an `error` with a known code on the socket, which stays open; which events are refused is
predicted by decoding the same bytes with the server's parser and validator, with calls that
ended remembered. `Canary` is account B: its call (whose id account A writes to as well)
publishes over REST and ingest, replays gap-free with `since`, reads back over REST, and the node
answers /healthz 200. `run_property` drives both under a Hypothesis profile; the CI test and
bench/hostile.py share it.
"""

from __future__ import annotations

import http.client
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import orjson
from hypothesis import given, seed
from hypothesis import settings as Settings  # noqa: N812 - the class, named apart from a profile
from hypothesis.errors import HypothesisWarning

from callstream import protocol as p
from callstream.events import ENDED, is_valid_call_id
from tests.helpers import ServerProcess
from tests.hostile_strategies import MAX_BODY, POOL_SIZE, Action, encode, examples, url_path
from tests.rawws import CLOSE, TEXT, RawWebSocket
from tests.rawws import encode as frame

TIMEOUT_S = 15.0


class RawHttp:
    """HTTP/1.1 on one keep-alive connection; `http.client` sends the path and body as given."""

    def __init__(self, port: int, key: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
        self.auth = {"Authorization": f"Bearer {key}"}

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any, bool]:
        """(status, JSON body or the raw bytes, whether the server closes the connection)."""
        headers = {**self.auth, "Content-Type": "application/json"} if body is not None else self.auth
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        raw = response.read()
        closing = response.will_close
        try:
            parsed: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = raw
        return response.status, parsed, closing

    def close(self) -> None:
        self.conn.close()


def assert_error_shape(status: int, body: Any, context: Any) -> None:
    """A refusal: `{"error": {"code", "message", …}}` with a non-empty code and message."""
    assert isinstance(body, dict), (status, body, context)
    assert set(body) == {"error"}, (status, body, context)
    code, message = body["error"].get("code"), body["error"].get("message")
    assert isinstance(code, str), (status, body, context)
    assert isinstance(message, str), (status, body, context)
    assert code, (status, body, context)
    assert message, (status, body, context)


def read_until(ws: RawWebSocket, done: Any, context: Any) -> list[dict[str, Any]]:
    """Every message up to and including the first for which `done(message)`; a close fails."""
    seen: list[dict[str, Any]] = []
    while True:
        got = ws.read(TIMEOUT_S)
        assert got is not None, ("no answer (socket closed or silent)", seen[-5:], context)
        assert got.opcode != CLOSE, ("socket closed", got.close_code, got.payload[:200], context)
        if got.opcode != TEXT:
            continue
        message = orjson.loads(got.payload)
        seen.append(message)
        if done(message):
            return seen


@dataclass
class Counts:
    examples: int = 0
    rest_requests: int = 0
    ingest_frames: int = 0
    canary_checks: int = 0
    bytes_sent: int = 0
    largest_body: int = 0
    answers: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        top = ", ".join(f"{k} {v}" for k, v in self.answers.most_common(8))
        return (
            f"{self.examples} examples, {self.rest_requests} REST requests, {self.ingest_frames} ingest frames, "
            f"{self.canary_checks} canary checks, {self.bytes_sent / 1e6:.1f} MB sent (largest body "
            f"{self.largest_body / 1e6:.2f} MB); answers: {top}"
        )


class Canary:
    """Account B's call: it must keep publishing, replaying and reading whatever A sends."""

    def __init__(self, server: ServerProcess, key: str) -> None:
        self.server = server
        self.key = key
        self.call_id = f"canary_{uuid.uuid4().hex[:8]}"
        self.http = RawHttp(server.port, key)
        self.ingest = self._open("/v1/ingest")
        self.last_seq = 0

    def _open(self, path: str) -> RawWebSocket:
        ws = RawWebSocket(self.server.port, f"{path}?token={self.key}", timeout=TIMEOUT_S)
        assert ws.status == 101, ws.status
        return ws

    def _final(self) -> dict[str, Any]:
        return {"type": "transcript.final", "data": {"speaker": "agent", "text": f"canary {self.last_seq + 1}"}}

    def check(self) -> None:
        # Publishing: over REST (202) and over ingest (ack).
        status, body, _ = self.http.request("POST", f"/v1/calls/{self.call_id}/events", orjson.dumps(self._final()))
        assert status == 202, ("canary publish", status, body)
        assert body["seq"] == [self.last_seq + 1], ("canary publish", body)
        self.last_seq += 1
        ref = f"canary-{self.last_seq + 1}"
        self.ingest.send(frame(TEXT, orjson.dumps({**self._final(), "call_id": self.call_id, "ref": ref})))
        answers = read_until(self.ingest, lambda m: m.get("ref") == ref, "canary ingest")
        assert answers[-1] == {"type": "ack", "ref": ref, "seq": self.last_seq + 1}, answers
        self.last_seq += 1
        # Replaying: every event after `since`, gap-free, only this account's, then `subscribed`.
        since = max(0, self.last_seq - 8)
        events = self._open("/v1/events")
        try:
            events.send(frame(TEXT, orjson.dumps({"type": "subscribe", "call_id": self.call_id, "since": since})))
            replay = read_until(events, lambda m: m.get("type") == "subscribed", "canary replay")
        finally:
            events.close()
        assert replay[-1]["data"]["seq"] == self.last_seq, replay[-1]
        self._assert_own(replay[:-1], since)
        # Reading over REST, and the node's health.
        status, call, _ = self.http.request("GET", f"/v1/calls/{self.call_id}")
        assert status == 200, ("canary call", status, call)
        assert call["last_seq"] == self.last_seq, ("canary call", call)
        status, stored, _ = self.http.request("GET", f"/v1/calls/{self.call_id}/events?since={since}")
        assert status == 200, ("canary events", status, stored)
        self._assert_own(stored["events"], since)
        status, transcript, _ = self.http.request("GET", f"/v1/calls/{self.call_id}/transcript")
        assert status == 200, ("canary transcript", status, transcript)
        assert len(transcript["utterances"]) == self.last_seq, ("canary transcript", transcript)
        status, health, _ = self.http.request("GET", "/healthz")
        assert status == 200, ("healthz", status, health)

    def _assert_own(self, events: list[dict[str, Any]], since: int) -> None:
        assert [e["seq"] for e in events] == list(range(since + 1, self.last_seq + 1)), (since, events)
        assert all(e["data"]["text"] == f"canary {e['seq']}" for e in events), events

    def close(self) -> None:
        self.http.close()
        self.ingest.close()


class Hostile:
    """Account A: sends each example's actions and checks every answer against the contract."""

    def __init__(self, server: ServerProcess, key: str, canary_call: str, counts: Counts) -> None:
        self.server = server
        self.key = key
        self.canary_call = canary_call
        self.counts = counts
        self.http = RawHttp(server.port, key)
        self.ingest = self._open_ingest()
        self.ended: set[str] = set()  # account A's calls that ended: their later events are refused
        self.prefix = uuid.uuid4().hex[:6]
        self.sentinels = 0

    def _open_ingest(self) -> RawWebSocket:
        ws = RawWebSocket(self.server.port, f"/v1/ingest?token={self.key}", timeout=TIMEOUT_S)
        assert ws.status == 101, ws.status
        return ws

    def run(self, example: list[Action]) -> None:
        n = self.counts.examples
        calls = [f"h{self.prefix}_{n}_{i}" for i in range(POOL_SIZE)] + [self.canary_call]
        for action in example:
            if action.channel == "rest":
                self._rest(action, calls)
            else:
                self._ingest(action, calls)

    # ---- REST ---------------------------------------------------------------------------------

    def _rest(self, action: Action, calls: list[str]) -> None:
        body = encode(action.body, calls, action.utf8)
        path = url_path(action.call, calls)
        expected = self._expected_rest(body, unquote(path.split("/")[3]))
        self.counts.rest_requests += 1
        self._sent(body)
        try:
            status, answer, closing = self.http.request("POST", path, body)
        except (http.client.HTTPException, OSError) as exc:
            self.http.close()  # the next request opens a new connection
            # Past the cap the server answers 413 at once and reads no more: the send may break.
            if expected != {413}:
                raise AssertionError(("REST connection failed", exc.__class__.__name__, path, body[:300])) from None
            self.counts.answers["rest 413 (closed while sending)"] += 1
            return
        self.counts.answers[f"rest {status}"] += 1
        context = (path, body[:300], answer)
        assert status in expected, (status, "expected", expected, context)
        if status == 202:
            assert isinstance(answer, dict), context
            assert len(answer["seq"]) == answer["accepted"], context
        else:
            assert_error_shape(status, answer, context)
        assert not closing or status == 413, ("the server closed the connection", context)
        if closing:
            self.http.close()

    def _expected_rest(self, body: bytes, call_id: str) -> set[int]:
        """The statuses the contract allows, and the ended calls updated as the server will."""
        if "/" in call_id or not call_id:
            return {404, 405}  # another path (or none) once the server decodes it
        if not is_valid_call_id(call_id):
            return {422}
        if len(body) > MAX_BODY:
            return {413}
        try:
            events = p.parse_event_batch(orjson.loads(body), call_id)
        except (orjson.JSONDecodeError, p.ProtocolError):
            return {422}
        if call_id in self.ended or any(e.type == ENDED for e in events[:-1]):
            return {422}
        if events[-1].type == ENDED:
            self.ended.add(call_id)
        return {202}

    # ---- ingest -------------------------------------------------------------------------------

    def _ingest(self, action: Action, calls: list[str]) -> None:
        body = encode(action.body, calls, action.utf8)
        try:
            body.decode()
        except UnicodeDecodeError:  # a text frame must be UTF-8: lone surrogates go as escapes
            body = encode(action.body, calls, utf8=False)
        errors, acks = self._expected_ingest(body)
        self.sentinels += 1
        sentinel = f"sentinel-{self.sentinels}"  # a ref is a short string or an integer
        tail = {"type": "agent.state", "data": {"state": "listening"}, "ref": sentinel}
        tail["call_id"] = f"sentinel_{self.prefix}_{self.sentinels // 1000}"
        sent = self.ingest.send(frame(TEXT, body)) and self.ingest.send(frame(TEXT, orjson.dumps(tail)))
        assert sent, ("the ingest socket was closed", body[:300])
        context = body[:300]
        *answers, last = read_until(self.ingest, lambda m: m.get("ref") == sentinel, context)
        assert last.get("type") == "ack", (last, context)
        self.counts.ingest_frames += 1
        self._sent(body)
        got_errors: list[tuple[str, str]] = []
        got_acks: list[str] = []
        for message in answers:
            self.counts.answers[f"ingest {message.get('type')}"] += 1
            if message.get("type") == "ack":
                assert isinstance(message.get("seq"), int), (message, context)
                got_acks.append(_key(message["ref"]))
                continue
            assert message.get("type") == "error", (message, context)
            data = message["data"]
            assert data["code"] in p.ERROR_CODES, (message, context)
            assert isinstance(data["message"], str), (message, context)
            got_errors.append((data["code"], _key(message.get("ref"))))
        assert sorted(got_errors) == sorted(errors), ("errors", got_errors, "expected", errors, context)
        assert got_acks == acks, ("acks", got_acks, "expected", acks, context)

    def _expected_ingest(self, body: bytes) -> tuple[list[tuple[str, str]], list[str]]:
        """(errors as (code, ref), acks' refs in order) the contract predicts for one frame."""
        if len(body) > MAX_BODY:
            return [(p.ErrorCode.MESSAGE_TOO_LARGE, _key(None))], []
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return [(p.ErrorCode.INVALID_MESSAGE, _key(None))], []
        items = obj if isinstance(obj, list) else [obj]
        if len(items) > p.MAX_BATCH_EVENTS:
            return [(p.ErrorCode.INVALID_MESSAGE, _key(None))], []
        errors: list[tuple[str, str]] = []
        valid = []
        for item in items:
            try:
                valid.append(p.parse_event(item))
            except p.ProtocolError as exc:
                errors.append((exc.code, _key(exc.ref)))
        acks: list[str] = []
        for event in valid:  # applied in order; after call.ended a call refuses the rest
            if event.call_id in self.ended:
                errors.append((p.ErrorCode.INVALID_MESSAGE, _key(event.ref)))
                continue
            if event.type == ENDED:
                self.ended.add(event.call_id)
            if event.ref is not None:
                acks.append(_key(event.ref))
        return errors, acks

    def _sent(self, body: bytes) -> None:
        self.counts.bytes_sent += len(body)
        self.counts.largest_body = max(self.counts.largest_body, len(body))

    def close(self) -> None:
        self.http.close()
        self.ingest.close()


def _key(ref: Any) -> str:
    """A ref as comparable text (refs may be any JSON value)."""
    return orjson.dumps(ref, option=orjson.OPT_SORT_KEYS).decode()


def run_property(
    server: ServerProcess,
    hostile_key: str,
    canary_key: str,
    profile: Settings,
    canary_every: int = 1,
    counts: Counts | None = None,
    random_seed: int | None = None,
) -> Counts:
    """Account A sends `profile.max_examples` examples; B's canary is checked every `canary_every`.

    Raises what Hypothesis raises for the (shrunk) failing example; the counts so far are kept in
    `counts` when given. `random_seed` fixes what Hypothesis generates (a long run's rounds).
    """
    counts = counts if counts is not None else Counts()
    canary = Canary(server, canary_key)
    hostile = Hostile(server, hostile_key, canary.call_id, counts)
    try:
        canary.check()
        counts.canary_checks += 1

        @profile
        @given(example=examples)
        def one_tenant_never_breaks_another(example: list[Action]) -> None:
            hostile.run(example)
            counts.examples += 1
            if counts.examples % canary_every == 0:
                canary.check()
                counts.canary_checks += 1

        if random_seed is not None:
            one_tenant_never_breaks_another = seed(random_seed)(one_tenant_never_breaks_another)
        with warnings.catch_warnings():
            # An example holds megabytes: Hypothesis warns as it prints the failing one, and the
            # suite's warnings-as-errors would put that warning in place of the failure it reports.
            warnings.filterwarnings("ignore", "Generating overly large repr", HypothesisWarning)
            one_tenant_never_breaks_another()
        canary.check()
        counts.canary_checks += 1
    finally:
        hostile.close()
        canary.close()
    return counts


def server_log_problems(server: ServerProcess) -> list[str]:
    """Lines of the server's whole log that show a crash: tracebacks and 500 answers."""
    text = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
    return [line for line in text.splitlines() if "Traceback" in line or 'HTTP/1.1" 500' in line]

