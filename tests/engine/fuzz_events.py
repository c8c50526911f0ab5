"""A seeded generator of malformed and hostile Realtime client events, for the protocol fuzz tests.

Every case is built so that the server's answer is known in advance: each hostile event must get one
`error` event (with the error codes allowed for it, and the client's `event_id` echoed whenever the event
was a JSON object carrying a string one). A case may begin with well-formed setup events (a first item
whose id is then reused, say); their expected answer is the event type a correct server sends.
Events that end the connection on purpose (invalid UTF-8, past the transport's size limit) are separate:
`closing_cases`.
"""

from __future__ import annotations

import base64
import json
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from engine.realtime.client_events import MAX_APPEND_SAMPLES, MAX_TEXT_CHARS

INVALID_JSON = "invalid_json"
INVALID_EVENT = "invalid_event"
UNKNOWN_TYPE = "unknown_event_type"
MISSING = "missing_required_parameter"
INVALID_VALUE = "invalid_value"
INVALID_AUDIO = "invalid_audio"
INVALID_IMAGE = "invalid_image"
UNSUPPORTED = "unsupported_feature"
ITEM_NOT_FOUND = "item_not_found"
TOO_LARGE = "event_too_large"


@dataclass
class Step:
    """One frame to send and what must come back for it."""

    payload: str | bytes | None  # None: send nothing, only wait for `expect` (unless it came already)
    expect: str = "error"  # "error", or the server event type a well-formed setup event gets
    codes: frozenset[str] = frozenset()  # allowed error codes (empty: any code but server_error)
    event_id: str | None = None  # the id the error must echo (None: the event carried none it could echo)


@dataclass
class Case:
    category: str
    steps: list[Step] = field(default_factory=list)

    @property
    def hostile(self) -> int:
        return sum(step.expect == "error" for step in self.steps)


# Values of every JSON type, for "wrong type" mutations; each field below says which of these it refuses.
WRONG_VALUES: list[Any] = [None, True, False, 0, -1, 7, 1.5, -0.0, "", "x", [], [1, "a"], {}, {"a": 1},
                           "😀" * 3, 2**63, -(2**63)]


def _pcm(rng: random.Random, samples: int) -> str:
    return base64.b64encode(rng.randbytes(samples * 2)).decode()


def _text(rng: random.Random, length: int) -> str:
    alphabet = string.ascii_letters + string.digits + " \t\n\"\\/{}[]:,'é😀\u0000\u202e"
    return "".join(rng.choice(alphabet) for _ in range(length))


class FuzzEvents:
    """`cases(n)` yields n cases, the same ones for the same seed."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self._serial = 0

    def _id(self, prefix: str = "fz") -> str:
        self._serial += 1
        return f"{prefix}_{self._serial}"

    def _event(self, body: dict, codes: set[str] | str, category: str, *, binary: bool = False) -> Case:
        """One hostile JSON object event with a fresh event_id the error must echo."""
        event_id = self._id("evt")
        body = {**body, "event_id": event_id}
        text = json.dumps(body, allow_nan=True)
        payload = text.encode() if binary else text
        codes = {codes} if isinstance(codes, str) else codes
        return Case(category, [Step(payload, codes=frozenset(codes), event_id=event_id)])

    def cases(self, count: int) -> Iterator[Case]:
        makers = [
            (self.bad_json, 8), (self.not_an_object, 4), (self.bad_type, 6), (self.bad_event_id, 3),
            (self.session_update, 16), (self.append, 10), (self.commit_with_nothing, 2), (self.item_create, 16),
            (self.item_reference, 8), (self.truncate, 8), (self.response_create, 8), (self.cancel, 4),
            (self.duplicate_item_id, 3), (self.truncate_past_the_end, 3), (self.deep_nesting, 2),
            (self.huge_strings, 3), (self.binary_frame, 4), (self.non_finite_numbers, 3),
            (self.during_a_response, 4),
        ]
        weights = [w for _, w in makers]
        for _ in range(count):
            maker = self.rng.choices([m for m, _ in makers], weights)[0]
            yield maker()

    # --- not an event at all ----------------------------------------------------------------------

    def bad_json(self) -> Case:
        rng = self.rng
        good = json.dumps({"type": "input_audio_buffer.append", "audio": _pcm(rng, 8), "event_id": "x"})
        choice = rng.randrange(6)
        if choice == 0:
            text = good[: rng.randrange(0, len(good) - 1)]  # cut short
        elif choice == 1:
            text = _text(rng, rng.randrange(1, 200))
        elif choice == 2:
            text = rng.choice(["", " ", "{", "}", "{]", "nul", "tru", "'x'", "{'type': 'x'}", "[1,]", "{\"a\":}",
                               "NaNa", "\ufeff{}", "{\"type\": \"response.create\",}"])
        elif choice == 3:
            text = good.replace(":", "=", 1)
        elif choice == 4:
            text = "1" * 5000  # an integer past Python's 4300-digit conversion limit
        else:
            text = good + "}" * rng.randrange(1, 5)
        try:
            json.loads(text)
        except ValueError:
            return Case("bad_json", [Step(text, codes=frozenset({INVALID_JSON}))])
        return self.bad_json()  # by chance valid JSON: draw again

    def not_an_object(self) -> Case:
        value = self.rng.choice([1, -2.5, "response.create", None, True, [], [{"type": "response.create"}],
                                 [[[]]], "x" * 1000])
        return Case("not_an_object", [Step(json.dumps(value), codes=frozenset({INVALID_EVENT}))])

    def bad_type(self) -> Case:
        rng = self.rng
        choice = rng.randrange(4)
        if choice == 0:  # no type
            return self._event({"audio": _pcm(rng, 4)}, INVALID_EVENT, "bad_type")
        if choice == 1:
            return self._event({"type": rng.choice([None, 1, True, [], {}, ["response.create"]])},
                               INVALID_EVENT, "bad_type")
        name = rng.choice(["response.explode", "session.create", "input_audio_buffer.appendx", "RESPONSE.CREATE",
                           "conversation.item.created", "error", "", " ", "session.update ",
                           "response.create\u0000", _text(rng, rng.randrange(1, 80)), "t" * 100_000])
        return self._event({"type": name}, UNKNOWN_TYPE, "unknown_type")

    def bad_event_id(self) -> Case:
        value = self.rng.choice([1, 2.5, True, [], {}, ["evt"], {"id": "x"}])
        body = {"type": "response.cancel", "event_id": value}
        return Case("bad_event_id", [Step(json.dumps(body), codes=frozenset({INVALID_VALUE}))])

    # --- wrong fields, event by event ------------------------------------------------------------

    def session_update(self) -> Case:
        rng = self.rng

        def wrong(*allowed: Any) -> Any:  # any non-object value except the allowed ones (an object is a valid shape)
            return rng.choice([v for v in WRONG_VALUES if not isinstance(v, dict)
                               and not any(v is a or (v == a and type(v) is type(a)) for a in allowed)])

        fields: list[tuple[dict, set[str]]] = [
            ({"session": wrong()} if rng.random() < 0.8 else {}, {INVALID_VALUE, MISSING}),
            ({"session": {"type": wrong("realtime")}}, {UNSUPPORTED}),
            ({"session": {"type": "transcription"}}, {UNSUPPORTED}),
            ({"session": {"instructions": rng.choice([1, [], {}, True, None])}}, {INVALID_VALUE}),
            ({"session": {"output_modalities": rng.choice([[], ["video"], "audio", [1], None, ["audio", 3]])}},
             {INVALID_VALUE}),
            ({"session": {"modalities": rng.choice([[], ["smell"], "text", {}])}}, {INVALID_VALUE}),
            ({"session": {"max_output_tokens": rng.choice([0, -1, 4097, 2**70, "many", True, 1.5, [], {}])}},
             {INVALID_VALUE}),
            ({"session": {"max_response_output_tokens": rng.choice([0, "infinite", False])}}, {INVALID_VALUE}),
            ({"session": {"temperature": rng.choice([-0.1, 2.5, "hot", True, None, [], 1e309])}}, {INVALID_VALUE}),
            ({"session": {"voice": rng.choice([1, [], {}, True, None])}}, {INVALID_VALUE}),
            ({"session": {"input_audio_format": rng.choice(["g711_ulaw", "pcm8", "", 16000, None, [],
                                                              {"type": "audio/pcm", "rate": 16000}])}},
             {UNSUPPORTED, INVALID_VALUE}),
            ({"session": {"output_audio_format": rng.choice(["g711_alaw", {"type": "audio/pcmu"}])}},
             {UNSUPPORTED, INVALID_VALUE}),
            ({"session": {"turn_detection": rng.choice([1, "server_vad", [], True])}}, {INVALID_VALUE}),
            ({"session": {"turn_detection": {"type": rng.choice(["client_vad", 3, None, [], {}])}}}, {INVALID_VALUE}),
            ({"session": {"turn_detection": {"type": "semantic_vad",
                                             "eagerness": rng.choice(["eager", 1, [], {}, ["low"], None])}}},
             {INVALID_VALUE}),
            ({"session": {"turn_detection": {"threshold": rng.choice([-0.5, 1.5, "0.5", True, [], 1e309])}}},
             {INVALID_VALUE}),
            ({"session": {"turn_detection": {"prefix_padding_ms": rng.choice([-1, 10_000, "300", [], False])}}},
             {INVALID_VALUE}),
            ({"session": {"turn_detection": {"silence_duration_ms": rng.choice([0, 49, 10**9, "x", {}])}}},
             {INVALID_VALUE}),
            ({"session": {"turn_detection": {rng.choice(["create_response", "interrupt_response"]):
                                             rng.choice([1, 0, "true", [], {}])}}}, {INVALID_VALUE}),
            ({"session": {"type": "realtime", "audio": wrong(None)}}, {INVALID_VALUE}),
            ({"session": {"type": "realtime", "audio": {"input": wrong(None)}}}, {INVALID_VALUE}),
            ({"session": {"type": "realtime", "audio": {"output": wrong(None)}}}, {INVALID_VALUE}),
            ({"session": {"type": "realtime", "audio": {"input": {"format": {
                "type": "audio/pcm",
                "rate": rng.choice([8000, 16000, 44100, 48000, 0, -24000, "24000", [], 24001])}}}}},
             {INVALID_VALUE}),
            ({"session": {"type": "realtime", "audio": {rng.choice(["input", "output"]): {"format": rng.choice([
                {"type": "audio/pcmu"}, {"type": "audio/pcma"}, {"type": "audio/mp3"}, {}, "wav", 1, [],
                {"type": ["audio/pcm"]}, {"type": {}}])}}}}, {UNSUPPORTED, INVALID_VALUE}),
            ({"session": {"type": "realtime", "audio": {"input": {"turn_detection": {
                "type": "server_vad", "threshold": rng.choice([2, -1, "high"])}}}}}, {INVALID_VALUE}),
            ({"session": {"type": "realtime", "audio": {"output": {"voice": rng.choice([3, [], True, {"id": 4},
                                                                                        {"id": None}, {}])}}}},
             {INVALID_VALUE}),
            ({"session": {"type": "realtime", "audio": {"output": {"speed": rng.choice([0, 0.1, 4.5, "fast",
                                                                                        True, []])}}}},
             {INVALID_VALUE}),
        ]
        body, codes = rng.choice(fields)
        return self._event({"type": "session.update", **body}, codes, "session_update")

    def append(self) -> Case:
        rng = self.rng
        choice = rng.randrange(7)
        if choice == 0:
            return self._event({"type": "input_audio_buffer.append"}, MISSING, "append")
        if choice == 1:
            return self._event({"type": "input_audio_buffer.append",
                                "audio": rng.choice([1, None, True, [], {}, ["AAAA"]])}, INVALID_AUDIO, "append")
        if choice == 2:  # not base64
            good = _pcm(rng, rng.randrange(1, 200))
            at = rng.randrange(len(good))
            bad = good[:at] + rng.choice("!*@#$%^&-_ \n.") + good[at + 1:]
            return self._event({"type": "input_audio_buffer.append", "audio": bad}, INVALID_AUDIO, "append")
        if choice == 3:  # padding missing
            samples = rng.randrange(0, 100) * 3 + rng.choice([1, 2])  # 2 or 4 bytes past a multiple of 3
            bad = _pcm(rng, samples).rstrip("=")
            return self._event({"type": "input_audio_buffer.append", "audio": bad}, INVALID_AUDIO, "append")
        if choice == 4:  # odd number of bytes: half a sample
            raw = rng.randbytes(rng.randrange(0, 400) * 2 + 1)
            return self._event({"type": "input_audio_buffer.append", "audio": base64.b64encode(raw).decode()},
                               INVALID_AUDIO, "append")
        if choice == 5:  # more than one append may carry
            return self._event({"type": "input_audio_buffer.append", "audio": _pcm(rng, MAX_APPEND_SAMPLES + 1)},
                               INVALID_AUDIO, "append_too_long")
        return self._event({"type": "input_audio_buffer.append", "audio": "data:audio/pcm;base64,AAAA"},
                           INVALID_AUDIO, "append")

    def commit_with_nothing(self) -> Case:
        return self._event({"type": "input_audio_buffer.commit"}, "input_audio_buffer_commit_empty", "out_of_order")

    def item_create(self) -> Case:
        rng = self.rng
        text_part = {"type": "input_text", "text": "hello"}
        item = lambda **over: {"type": "message", "role": "user", "content": [text_part], **over}
        options: list[tuple[dict, set[str]]] = [
            ({}, {MISSING}),
            ({"item": rng.choice([None, 1, "x", [], True])}, {MISSING, INVALID_VALUE}),
            ({"item": item(id=rng.choice([1, [], {}, True]))}, {INVALID_VALUE}),
            ({"item": item(type=rng.choice(["function_call", "function_call_output", "image", 3, []]))},
             {UNSUPPORTED}),
            ({"item": item(role=rng.choice(["robot", "", "USER", 1, None, []]))}, {INVALID_VALUE, MISSING}),
            ({"item": {k: v for k, v in item().items() if k != "role"}}, {MISSING}),
            ({"item": item(content=rng.choice([None, "hello", {}, 1, []]))}, {INVALID_VALUE, MISSING}),
            ({"item": item(content=[rng.choice([None, 1, "input_text", [], True])])}, {INVALID_VALUE}),
            ({"item": item(content=[{"type": rng.choice(["output_audio", "image", "", 1, None])}])},
             {INVALID_VALUE, MISSING}),
            ({"item": item(content=[{"type": "input_text", "text": rng.choice([None, 1, [], {}])}])},
             {INVALID_VALUE, MISSING}),
            ({"item": item(content=[{"type": "input_text", "text": "y" * (MAX_TEXT_CHARS + 1)}])}, {INVALID_VALUE}),
            ({"item": item(role="system", content=[{"type": "input_audio", "audio": "AAAA"}])}, {INVALID_VALUE}),
            ({"item": item(role="assistant", content=[{"type": "input_text", "text": "x"}])}, {INVALID_VALUE}),
            ({"item": item(role="assistant", content=[{"type": "output_audio", "transcript": 5}])},
             {INVALID_VALUE}),
            ({"item": item(content=[{"type": "input_audio", "audio": rng.choice(["!!", 5, "AA==", "AQID"])}])},
             {INVALID_AUDIO}),
            ({"item": item(content=[{"type": "input_audio", "transcript": rng.choice([1, [], {}])}])},
             {INVALID_VALUE}),
            ({"item": item(content=[{"type": "input_image", "image_url": rng.choice([
                None, 5, [], "http://example.com/screen.png", "file:///etc/passwd", "data:text/plain;base64,AAAA",
                "data:image/png,rawbytes", "data:image/png;base64,", "data:image/png;base64,!!!!",
                "data:image/png;base64,AAA"])}])}, {INVALID_IMAGE}),
            ({"item": item(), "previous_item_id": rng.choice([1, [], {}, True])}, {INVALID_VALUE}),
        ]
        body, codes = rng.choice(options)
        return self._event({"type": "conversation.item.create", **body}, codes, "item_create")

    def item_reference(self) -> Case:
        rng = self.rng
        kind = rng.choice(["conversation.item.delete", "conversation.item.retrieve", "conversation.item.create"])
        unknown = rng.choice(["item_nope", "", "root ", "item_" + _text(rng, 20), "x" * 2000])
        if kind == "conversation.item.create":
            return self._event({"type": kind, "previous_item_id": unknown, "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}},
                {ITEM_NOT_FOUND, INVALID_VALUE}, "unknown_item")
        if rng.random() < 0.3:
            return self._event({"type": kind, "item_id": rng.choice([None, 1, [], {}])}, {MISSING, INVALID_VALUE},
                               "item_reference")
        return self._event({"type": kind, "item_id": unknown}, {ITEM_NOT_FOUND, INVALID_VALUE}, "unknown_item")

    def truncate(self) -> Case:
        rng = self.rng
        body = {"type": "conversation.item.truncate", "item_id": "item_nope", "content_index": 0, "audio_end_ms": 10}
        field_name = rng.choice(["item_id", "content_index", "audio_end_ms", "missing", "unknown"])
        if field_name == "missing":
            del body[rng.choice(["item_id", "content_index", "audio_end_ms"])]
            codes = {MISSING}
        elif field_name == "unknown":
            codes = {ITEM_NOT_FOUND}
        elif field_name == "item_id":
            body["item_id"] = rng.choice([None, 1, [], {}, True])
            codes = {MISSING, INVALID_VALUE}  # null counts as absent
        else:
            body[field_name] = rng.choice([-1, -(2**63), 1.5, "10", None, True, [], {}])
            codes = {MISSING, INVALID_VALUE}
        return self._event(body, codes, "truncate")

    def response_create(self) -> Case:
        rng = self.rng
        options: list[tuple[Any, set[str]]] = [
            (rng.choice([1, "x", [], True, ["audio"]]), {INVALID_VALUE}),
            ({"instructions": rng.choice([1, [], {}, True])}, {INVALID_VALUE}),
            ({"conversation": rng.choice(["none", "other", 1, [], {}])}, {UNSUPPORTED}),
            ({"output_modalities": rng.choice([["video"], "audio", [1], {}])}, {INVALID_VALUE}),
            ({"modalities": rng.choice([["smell"], "text", [None]])}, {INVALID_VALUE}),
            ({"max_output_tokens": rng.choice([0, -5, 5000, "lots", 2.5])}, {INVALID_VALUE}),
            ({"temperature": rng.choice([-1, 9, "warm", [], True])}, {INVALID_VALUE}),
        ]
        value, codes = rng.choice(options)
        return self._event({"type": "response.create", "response": value}, codes, "response_create")

    def cancel(self) -> Case:
        rng = self.rng
        if rng.random() < 0.3:
            return self._event({"type": "response.cancel", "response_id": rng.choice([1, [], {}, True])},
                               INVALID_VALUE, "cancel")
        body = {"type": "response.cancel"}
        if rng.random() < 0.5:
            body["response_id"] = rng.choice(["resp_nope", "", "resp_" + _text(rng, 10)])
        return self._event(body, "response_cancel_not_active", "cancel_with_nothing_running")

    # --- sequences: duplicate ids, references past the end -----------------------------------------

    def duplicate_item_id(self) -> Case:
        item_id = self._id("item_dup")
        create = {"type": "conversation.item.create",
                  "item": {"id": item_id, "type": "message", "role": "user",
                           "content": [{"type": "input_text", "text": "first"}]}}
        second = self._event(create, "duplicate_item_id", "duplicate_item_id")
        return Case("duplicate_item_id", [Step(json.dumps(create), expect="conversation.item.created"),
                                          *second.steps])

    def truncate_past_the_end(self) -> Case:
        """An assistant item given as history has no audio: any audio_end_ms past 0 is past its end;
        a user item cannot be truncated at all."""
        rng = self.rng
        item_id = self._id("item_hist")
        role = rng.choice(["assistant", "user"])
        part = ({"type": "output_audio", "transcript": "an old answer"} if role == "assistant"
                else {"type": "input_text", "text": "an old question"})
        create = {"type": "conversation.item.create",
                  "item": {"id": item_id, "type": "message", "role": role, "content": [part]}}
        end_ms = rng.choice([50, 1000, 2**40])
        index = 0 if role == "assistant" else rng.choice([0, 1, 5])
        truncate = self._event({"type": "conversation.item.truncate", "item_id": item_id, "content_index": index,
                                "audio_end_ms": end_ms},
                               "audio_end_ms_out_of_range" if role == "assistant" else INVALID_VALUE,
                               "truncate_past_the_end")
        return Case("truncate_past_the_end", [Step(json.dumps(create), expect="conversation.item.created"),
                                              *truncate.steps])

    def during_a_response(self) -> Case:
        """Hostile events while a reply streams in the same session: answered between its deltas."""
        makers = [self.bad_json, self.session_update, self.append, self.item_create, self.item_reference,
                  self.truncate, self.binary_frame, self.non_finite_numbers]  # (no cancel: it would succeed)
        steps = [Step(json.dumps({"type": "response.create", "response": {"max_output_tokens": 16}}),
                      expect="response.created")]
        for _ in range(self.rng.randrange(2, 6)):
            steps += self.rng.choice(makers)().steps
        return Case("during_a_response", [*steps, Step(None, expect="response.done")])

    # --- hostile shapes ----------------------------------------------------------------------------

    def deep_nesting(self) -> Case:
        depth = self.rng.choice([2_000, 50_000, 200_000])
        opener, closer = self.rng.choice([("[", "]"), ('{"a":', "}")])
        inner = opener * depth + "1" + closer * depth
        event_id = self._id("evt")
        text = '{"type": "session.update", "event_id": "%s", "session": %s}' % (event_id, inner)
        return Case("deep_nesting", [Step(text, codes=frozenset({INVALID_JSON}))])

    def huge_strings(self) -> Case:
        rng = self.rng
        big = "A" * rng.choice([100_000, 1_000_000, 4_000_000])
        options: list[tuple[dict, set[str]]] = [
            ({"type": "session.update", "session": {"instructions": big}}, {INVALID_VALUE}),
            ({"type": "session.update", "session": {"voice": big}}, {INVALID_VALUE}),
            ({"type": "conversation.item.create", "item": {"id": big, "type": "message", "role": "user",
                                                           "content": [{"type": "input_text", "text": "x"}]}},
             {INVALID_VALUE}),
            ({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                           "content": [{"type": "input_text", "text": big}]}},
             {INVALID_VALUE}),
            ({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
                {"type": "input_audio", "transcript": big}]}}, {INVALID_VALUE}),
            ({"type": "conversation.item.truncate", "item_id": big, "content_index": 0, "audio_end_ms": 0},
             {INVALID_VALUE, ITEM_NOT_FOUND}),
            ({"type": "response.create", "response": {"instructions": big}}, {INVALID_VALUE}),
            ({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "x"}] * 2_000}}, {INVALID_VALUE}),
        ]
        body, codes = rng.choice(options)
        case = self._event(body, codes, "huge_strings")
        if rng.random() < 0.3:  # a huge event_id cannot be echoed whole: refused, and not echoed
            step = case.steps[0]
            body = {**json.loads(step.payload), "event_id": big}
            case.steps[0] = Step(json.dumps(body), codes=frozenset({INVALID_VALUE}))
        return case

    def binary_frame(self) -> Case:
        rng = self.rng
        if rng.random() < 0.5:
            raw = rng.randbytes(rng.randrange(1, 2000))
            try:
                json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                return Case("binary_frame", [Step(raw, codes=frozenset({INVALID_JSON}))])
            return self.binary_frame()
        return self._event({"type": "conversation.item.delete", "item_id": "item_nope"}, ITEM_NOT_FOUND,
                           "binary_frame", binary=True)

    def non_finite_numbers(self) -> Case:
        """Python's JSON reader accepts NaN and Infinity; no number field may."""
        value = self.rng.choice([float("nan"), float("inf"), float("-inf")])
        options = [
            {"type": "session.update", "session": {"temperature": value}},
            {"type": "session.update", "session": {"turn_detection": {"threshold": value}}},
            {"type": "session.update", "session": {"turn_detection": {"silence_duration_ms": value}}},
            {"type": "session.update", "session": {"type": "realtime", "audio": {"output": {"speed": value}}}},
            {"type": "conversation.item.truncate", "item_id": "item_nope", "content_index": 0, "audio_end_ms": value},
            {"type": "response.create", "response": {"temperature": value}},
        ]
        return self._event(self.rng.choice(options), INVALID_VALUE, "non_finite_numbers")


def closing_cases() -> list[tuple[str, bytes | str, bool, int]]:
    """(name, payload, send as text, close code the server must give): frames a WebSocket server must
    refuse by closing, each on its own connection."""
    from engine.realtime.client_events import MAX_EVENT_BYTES

    return [
        ("text frame that is not UTF-8", b'{"type": "response.cancel", "x": "\xff\xfe"}', True, 1007),
        ("frame past the transport limit", b'{"type": "x", "pad": "' + b"A" * (2 * MAX_EVENT_BYTES) + b'"}', True,
         1009),
    ]


def oversized_cases() -> list[Case]:
    """Events past MAX_EVENT_BYTES but within the transport's limit: refused unread, so no id can be echoed."""
    from engine.realtime.client_events import MAX_EVENT_BYTES

    padding = "A" * (MAX_EVENT_BYTES + 16)
    return [
        Case("oversized", [Step(json.dumps({"type": "input_audio_buffer.append", "audio": padding}),
                                codes=frozenset({TOO_LARGE}))]),
        Case("oversized", [Step(b'{"type": "session.update", "session": {"instructions": "' + padding.encode()
                                + b'"}}', codes=frozenset({TOO_LARGE}))]),
    ]
