"""One focused test for each bug the protocol fuzzer (test_fuzz_realtime.py) found in the Realtime server."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from websockets.asyncio.server import ServerConnection

from engine.realtime import server as server_module
from engine.realtime.errors import MAX_MESSAGE_CHARS
from engine.realtime.session import RealtimeSession
from tests.engine.test_realtime_protocol import TOKEN, ask_text, client, served, vad_detectors  # noqa: F401

FOUND_WHILE_VALIDATING = [
    ("no type", {"audio": "AAAA"}, "invalid_event"),
    ("unknown type", {"type": "response.explode"}, "unknown_event_type"),
    ("missing field", {"type": "conversation.item.truncate", "item_id": "x", "content_index": 0},
     "missing_required_parameter"),
    ("wrong type", {"type": "conversation.item.delete", "item_id": 5}, "invalid_value"),
    ("bad base64", {"type": "input_audio_buffer.append", "audio": "!!"}, "invalid_audio"),
    ("bad image", {"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
        {"type": "input_image", "image_url": "http://example.com/x.png"}]}}, "invalid_image"),
]


@pytest.mark.parametrize("name,event,code", FOUND_WHILE_VALIDATING, ids=[f[0] for f in FOUND_WHILE_VALIDATING])
async def test_an_error_found_while_validating_echoes_the_event_id(client, name, event, code):
    """Only errors raised by the handlers echoed the id; those raised by validation (most of them) sent null."""
    await client.send_raw(json.dumps({**event, "event_id": f"evt_{name.replace(' ', '_')}"}))
    error = (await client.expect("error"))["error"]
    assert (error["code"], error["event_id"]) == (code, f"evt_{name.replace(' ', '_')}")


@pytest.mark.parametrize("opener,closer", [("[", "]"), ('{"a":', "}")])
async def test_deeply_nested_json_is_invalid_json_not_an_internal_error(client, opener, closer):
    """json.loads raises RecursionError (not ValueError) past ~1,000 levels: it was a server_error."""
    await client.send_raw('{"type": "session.update", "session": ' + opener * 50_000 + "1" + closer * 50_000 + "}")
    error = (await client.expect("error"))["error"]
    assert error["code"] == "invalid_json" and "nested too deeply" in error["message"]
    assert (await ask_text(client, "still there?"))[-1]["response"]["status"] == "completed"


@pytest.mark.parametrize("eagerness", [[], {}, ["low"]])
async def test_an_unhashable_eagerness_is_an_invalid_value(client, eagerness):
    """`eagerness not in {dict}` raised TypeError for a list or an object: it was a server_error."""
    await client.send("session.update", event_id="evt_e",
                      session={"turn_detection": {"type": "semantic_vad", "eagerness": eagerness}})
    error = (await client.expect("error"))["error"]
    assert (error["code"], error["param"], error["event_id"]) == (
        "invalid_value", "session.turn_detection.eagerness", "evt_e")


@pytest.mark.parametrize("event", [
    {"type": "session.update", "session": {"type": "x" * 1_000_000}},
    {"type": "conversation.item.create", "item": {"type": "y" * 1_000_000, "role": "user", "content": []}},
    {"type": "session.update", "session": {"input_audio_format": "z" * 1_000_000}},
])
async def test_an_error_does_not_echo_a_huge_value_back(client, event):
    """Messages quoted the offending value whole: a 1 MB value came back in a 1 MB error event."""
    await client.send_raw(json.dumps(event))
    error = await client.expect("error")
    assert len(error["error"]["message"]) <= MAX_MESSAGE_CHARS
    assert len(json.dumps(error)) < 2 * MAX_MESSAGE_CHARS


async def test_a_client_that_does_not_read_is_not_read_either(served, monkeypatch):
    """The outbox was unbounded: a client flooding events and reading none made the server queue an error for
    every one (+44 MB of server memory per 100,000 events). Now the server stops reading that client once
    OUTBOX_HIGH_WATER events wait for it, and carries on when it reads again."""
    _, url, _ = served
    gate = asyncio.Event()
    real_send = ServerConnection.send
    handled = 0
    real_handle = RealtimeSession.handle

    async def stalled_send(self, message, *args, **kwargs):  # a client whose socket takes nothing
        await gate.wait()
        return await real_send(self, message, *args, **kwargs)

    def counting_handle(self, raw):
        nonlocal handled
        handled += 1
        real_handle(self, raw)

    monkeypatch.setattr(ServerConnection, "send", stalled_send)
    monkeypatch.setattr(RealtimeSession, "handle", counting_handle)
    ws = await websockets.connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"})
    count = 3 * server_module.OUTBOX_HIGH_WATER

    async def flood() -> None:
        for i in range(count):
            await ws.send(json.dumps({"type": "response.cancel", "event_id": f"f{i}"}))

    sender = asyncio.create_task(flood())
    await asyncio.sleep(1.0)
    assert handled <= server_module.OUTBOX_HIGH_WATER + 1, handled  # it stopped reading
    gate.set()
    await asyncio.wait_for(sender, 30)
    answers = []
    while len(answers) < count:
        event = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if event["type"] == "error":
            answers.append(event["error"]["event_id"])
    assert answers == [f"f{i}" for i in range(count)]  # every one answered, in order, once it read again
    await ws.close()


async def test_a_malformed_response_create_is_told_so_even_while_a_response_runs(client, served):
    """The "response in progress" check came before the options were read: a malformed response.create sent
    during a reply was answered conversation_already_has_active_response, hiding what was wrong with it."""
    backend, _, _ = served
    backend.step_s = 0.5
    await client.send("response.create")
    await client.expect("response.created")
    await client.send("response.create", event_id="evt_bad", response={"temperature": 9})
    error = (await client.expect("error"))["error"]
    assert (error["code"], error["param"], error["event_id"]) == ("invalid_value", "session.temperature", "evt_bad")
    await client.send("response.create", event_id="evt_good")
    error = (await client.expect("error"))["error"]
    assert (error["code"], error["event_id"]) == ("conversation_already_has_active_response", "evt_good")


def test_two_replies_in_a_row_are_one_assistant_turn_to_the_model():
    """Found on the real models: response.create twice in a row (or after an assistant item given as history)
    failed the reply with model_failure, llama.cpp refusing "2 or more assistant messages at the end"."""
    from engine.backends.base import ReplyRequest, Turn
    from engine.llm.chat_model import ChatModel
    from engine.llm.prompt import build_messages
    from engine.models.store import ModelStore

    turns = (Turn("user", "Tell me about leeks."), Turn("assistant", "Leeks are mild onions."),
             Turn("user", ""), Turn("assistant", "They suit soups."))  # an inaudible turn in between is dropped
    messages = build_messages(ReplyRequest("Be brief.", turns), 1024, 32)
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[-1]["content"] == "Leeks are mild onions.\n\nThey suit soups."
    model = ChatModel(ModelStore().resolve("smollm2-135m-instruct").file(), 1, 1024, slots=1)
    try:
        said: list[str] = []
        model.stream(messages, slot=0, on_text=said.append, should_stop=lambda: False, max_tokens=8, seed=1)
        assert "".join(said).strip()  # llama.cpp took the chat and answered
    finally:
        model.close()
