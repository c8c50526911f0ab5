"""Every input limit of the Realtime server: just inside it works, just past it is one `error` event whose
message names the limit, and the session goes on."""

from __future__ import annotations

import base64
import io
import json
import random
import struct
import zlib

import pytest
import websockets

from engine.realtime import client_events, conversation, server, session
from engine.realtime.client_events import (MAX_APPEND_SAMPLES, MAX_CONTENT_PARTS, MAX_EVENT_BYTES, MAX_ID_CHARS,
                                           MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, MAX_NAME_CHARS, MAX_TEXT_CHARS)
from tests.engine.realtime_client import RealtimeTestClient
from tests.engine.test_realtime_protocol import TOKEN, ask_text, client, png_bytes, served, vad_detectors  # noqa: F401


def pcm(samples: int) -> str:
    return base64.b64encode(b"\x01\x00" * samples).decode()


def text_item(text: str = "hi", **item) -> dict:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}], **item}


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width`×`height` pixels and holds almost none: what a decompression bomb looks like
    before it is decoded."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data
                                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def image_item(data: bytes) -> dict:
    return {"type": "message", "role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64," + base64.b64encode(data).decode()}]}


async def refused(client: RealtimeTestClient, event: dict | str, code: str, limit: int | str,
                  event_id: str | None = "evt_limit") -> dict:
    """Send one event past a limit: it gets one error with `code`, whose message names `limit`."""
    if isinstance(event, dict):
        event = json.dumps({**event, "event_id": event_id} if event_id else event)
    await client.send_raw(event)
    error = (await client.expect("error"))["error"]
    assert error["code"] == code, error
    assert str(limit) in error["message"], error["message"]
    assert error["event_id"] == event_id
    return error


async def accepted(client: RealtimeTestClient, event: dict, answer: str) -> dict:
    await client.send_raw(json.dumps(event))
    got = await client.next_event(10)
    assert got["type"] == answer, got
    return got


async def test_event_size(client):
    big = json.dumps({"type": "conversation.item.create", "item": text_item(), "pad": "x" * MAX_EVENT_BYTES})
    await refused(client, big, "event_too_large", MAX_EVENT_BYTES, event_id=None)  # refused unread: no id
    assert (await ask_text(client, "still there?"))[-1]["response"]["status"] == "completed"


async def test_audio_per_append(client):
    await client.send("session.update", session={"turn_detection": None})
    await client.expect("session.updated")
    await refused(client, {"type": "input_audio_buffer.append", "audio": pcm(MAX_APPEND_SAMPLES + 1)},
                  "invalid_audio", MAX_APPEND_SAMPLES)
    await client.send("input_audio_buffer.append", audio=pcm(MAX_APPEND_SAMPLES))
    await accepted(client, {"type": "input_audio_buffer.commit"}, "input_audio_buffer.committed")


async def test_input_audio_buffer(client):
    """Ten minutes of uncommitted audio is the most the buffer holds; clearing it makes room again."""
    await client.send("session.update", session={"turn_detection": None})
    await client.expect("session.updated")
    full = session.MAX_BUFFER_SAMPLES // MAX_APPEND_SAMPLES
    for _ in range(full):
        await client.send("input_audio_buffer.append", audio=pcm(MAX_APPEND_SAMPLES))
    await refused(client, {"type": "input_audio_buffer.append", "audio": pcm(1)}, "input_audio_buffer_full",
                  "10 minutes")
    await accepted(client, {"type": "input_audio_buffer.clear"}, "input_audio_buffer.cleared")
    await client.send("input_audio_buffer.append", audio=pcm(2400))
    await accepted(client, {"type": "input_audio_buffer.commit"}, "input_audio_buffer.committed")


@pytest.mark.parametrize("where", ["text", "transcript", "session instructions", "response instructions"])
async def test_text_length(client, where):
    too_long, longest = "a" * (MAX_TEXT_CHARS + 1), "a" * MAX_TEXT_CHARS
    events = {
        "text": lambda t: {"type": "conversation.item.create", "item": text_item(t)},
        "transcript": lambda t: {"type": "conversation.item.create", "item": {
            "type": "message", "role": "assistant", "content": [{"type": "output_audio", "transcript": t}]}},
        "session instructions": lambda t: {"type": "session.update", "session": {"instructions": t}},
        "response instructions": lambda t: {"type": "response.create", "response": {"instructions": t}},
    }
    answers = {"text": "conversation.item.created", "transcript": "conversation.item.created",
               "session instructions": "session.updated", "response instructions": "response.created"}
    await refused(client, events[where](too_long), "invalid_value", MAX_TEXT_CHARS)
    await accepted(client, events[where](longest), answers[where])


@pytest.mark.parametrize("where", ["event_id", "item.id", "item_id", "previous_item_id", "response_id"])
async def test_id_length(client, where):
    long_id = "i" * (MAX_ID_CHARS + 1)
    events = {
        "event_id": {"type": "response.cancel"},
        "item.id": {"type": "conversation.item.create", "item": text_item(id=long_id)},
        "item_id": {"type": "conversation.item.retrieve", "item_id": long_id},
        "previous_item_id": {"type": "conversation.item.create", "item": text_item(), "previous_item_id": long_id},
        "response_id": {"type": "response.cancel", "response_id": long_id},
    }
    if where == "event_id":  # too long to be echoed: refused, and answered without it
        await refused(client, json.dumps({**events[where], "event_id": long_id}), "invalid_value", MAX_ID_CHARS,
                      event_id=None)
    else:
        await refused(client, events[where], "invalid_value", MAX_ID_CHARS)
    await accepted(client, {"type": "conversation.item.create", "item": text_item(id="i" * MAX_ID_CHARS)},
                   "conversation.item.created")


async def test_voice_name_length(client):
    await refused(client, {"type": "session.update", "session": {"voice": "v" * (MAX_NAME_CHARS + 1)}},
                  "invalid_value", MAX_NAME_CHARS)


async def test_parts_per_item(client):
    part = {"type": "input_text", "text": "x"}
    await refused(client, {"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [part] * (MAX_CONTENT_PARTS + 1)}}, "invalid_value",
        MAX_CONTENT_PARTS)
    await accepted(client, {"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [part] * MAX_CONTENT_PARTS}}, "conversation.item.created")


async def test_image_bytes(client):
    padding = random.Random(1).randbytes(MAX_IMAGE_BYTES + 1 - len(png_bytes()))
    error = await refused(client, {"type": "conversation.item.create", "item": image_item(png_bytes() + padding)},
                          "image_too_large", MAX_IMAGE_BYTES)
    assert error["param"] == "item.content[0].image_url"
    await accepted(client, {"type": "conversation.item.create", "item": image_item(png_bytes())},
                   "conversation.item.created")


@pytest.mark.parametrize("width,height", [(10_000, 5_000), (2**31 - 1, 2**31 - 1)])
async def test_image_pixels(client, width, height):
    """Refused from the header, before anything is decoded (a tiny file can declare gigapixels)."""
    await refused(client, {"type": "conversation.item.create", "item": image_item(png_header(width, height))},
                  "image_too_large", MAX_IMAGE_PIXELS)


async def test_image_pixels_just_inside_the_limit_are_read(client):
    from PIL import Image

    side = int(MAX_IMAGE_PIXELS ** 0.5)
    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, format="PNG")
    await accepted(client, {"type": "conversation.item.create", "item": image_item(buffer.getvalue())},
                   "conversation.item.created")


async def test_items_in_a_conversation(client):
    """A day-long session keeps the latest MAX_ITEMS; the oldest are forgotten and the client is told."""
    first = await accepted(client, {"type": "conversation.item.create", "item": text_item("first")},
                           "conversation.item.created")
    for index in range(conversation.MAX_ITEMS - 1):
        await client.send("conversation.item.create", item=text_item(f"item {index}"))
    await client.send("conversation.item.create", item=text_item("one too many"))
    deleted = await client.expect("conversation.item.deleted")
    assert deleted["item_id"] == first["item"]["id"]
    await client.send("conversation.item.retrieve", item_id=first["item"]["id"])
    assert (await client.expect("error"))["error"]["code"] == "item_not_found"
    assert (await ask_text(client, "still there?"))[-1]["response"]["status"] == "completed"


async def test_screenshots_held(client):
    """Only the latest MAX_IMAGES screenshots are held; an older one leaves its item (its text stays)."""
    await client.send("conversation.item.create", item={"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "look"}, *image_item(png_bytes())["content"]]})
    first = (await client.expect("conversation.item.created"))["item"]
    assert [p["type"] for p in first["content"]] == ["input_text", "input_image"]
    for _ in range(conversation.MAX_IMAGES):
        await client.send("conversation.item.create", item=image_item(png_bytes()))
        await client.expect("conversation.item.created")
    await client.send("conversation.item.retrieve", item_id=first["id"])
    assert [p["type"] for p in (await client.expect("conversation.item.retrieved"))["item"]["content"]] == [
        "input_text"]


async def test_sessions(served):
    _, url, _ = served
    clients = [await RealtimeTestClient.connect(url, TOKEN) for _ in range(server.MAX_SESSIONS)]
    with pytest.raises(websockets.InvalidStatus) as refused_status:
        await websockets.connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"})
    assert refused_status.value.response.status_code == 503
    assert b"too many sessions" in refused_status.value.response.body
    for each in clients:
        await each.close()


def test_limits_fit_inside_each_other():
    assert MAX_IMAGE_BYTES * 4 // 3 + 1024 < MAX_EVENT_BYTES  # a largest image still fits in an event
    assert MAX_APPEND_SAMPLES * 2 * 4 // 3 + 1024 < MAX_EVENT_BYTES
    assert 1_300 < server.OUTBOX_HIGH_WATER < 10_000  # above a 60 s reply's events, below a memory worry
    assert client_events.MAX_TEXT_CHARS * 4 < MAX_EVENT_BYTES
