"""The Realtime protocol over a real WebSocket, with a scripted backend so each case is fast and exact.

The same server with the real models is exercised in test_realtime_end_to_end.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json

import numpy as np
import pytest
import websockets

from engine.assembly import detector_factory
from engine.realtime.server import RealtimeServer
from tests.engine.realtime_client import RealtimeTestClient, audio_of, transcript_of
from tests.engine.scripted_backend import ScriptedBackend, tone_chunk
from tests.speakers import say

TOKEN = "test-token-123"


@pytest.fixture(scope="module")
def vad_detectors(model_store):
    return detector_factory(model_store)


@pytest.fixture
async def served(vad_detectors):
    backend = ScriptedBackend()
    server = RealtimeServer(backend, vad_detectors, TOKEN)
    port = await server.start("127.0.0.1", 0)
    yield backend, f"ws://127.0.0.1:{port}/v1/realtime", server
    await server.stop()


@pytest.fixture
async def client(served):
    _, url, _ = served
    client = await RealtimeTestClient.connect(url, TOKEN)
    yield client
    await client.close()


def png_bytes() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(buffer, format="PNG")
    return buffer.getvalue()


async def start_reply(client: RealtimeTestClient, text: str) -> None:
    await client.send("conversation.item.create",
                      item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
    await client.send("response.create")


async def ask_text(client: RealtimeTestClient, text: str) -> list[dict]:
    await start_reply(client, text)
    return await client.collect_until("response.done")


# --- connection and auth -------------------------------------------------------------------------

async def test_session_created_has_the_ga_shape(served):
    _, url, _ = served
    client = await RealtimeTestClient.connect(url, TOKEN)
    created = client.events[0]["session"]
    assert created["type"] == "realtime"
    assert created["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert created["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    await client.close()


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}])
async def test_missing_or_wrong_token_is_refused(served, headers):
    _, url, _ = served
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(url, additional_headers=headers)
    assert refused.value.response.status_code == 401


async def test_browser_origin_is_refused_and_unknown_path_is_404(served):
    _, url, _ = served
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"},
                                 origin="http://evil.example")
    assert refused.value.response.status_code == 403
    with pytest.raises(websockets.InvalidStatus) as missing:
        await websockets.connect(url.replace("/v1/realtime", "/other"),
                                 additional_headers={"Authorization": f"Bearer {TOKEN}"})
    assert missing.value.response.status_code == 404


async def test_token_as_subprotocol_for_browser_style_clients(served):
    _, url, _ = served
    ws = await websockets.connect(url, subprotocols=["realtime", f"openai-insecure-api-key.{TOKEN}"])
    assert json.loads(await ws.recv())["type"] == "session.created"
    await ws.close()


async def test_sessions_are_independent(served):
    _, url, server = served
    first = await RealtimeTestClient.connect(url, TOKEN)
    second = await RealtimeTestClient.connect(url, TOKEN)
    await first.send("session.update", session={"type": "realtime", "instructions": "Be a pirate."})
    updated = await first.expect("session.updated")
    assert updated["session"]["instructions"] == "Be a pirate."
    await ask_text(second, "hello")
    assert len(server.sessions) == 2
    assert first.events[0]["session"]["id"] != second.events[0]["session"]["id"]
    await first.close()
    await second.close()


# --- malformed input: an error event each, and the session keeps working ---------------------------

MALFORMED = [
    ("not json", "{nope", "invalid_json"),
    ("not an object", "[1, 2]", "invalid_event"),
    ("no type", json.dumps({"event_id": "e1"}), "invalid_event"),
    ("unknown type", json.dumps({"type": "response.explode"}), "unknown_event_type"),
    ("bad base64", json.dumps({"type": "input_audio_buffer.append", "audio": "!!!not-base64"}), "invalid_audio"),
    ("odd sample count", json.dumps({"type": "input_audio_buffer.append",
                                     "audio": base64.b64encode(b"\x01\x02\x03").decode()}), "invalid_audio"),
    ("audio not a string", json.dumps({"type": "input_audio_buffer.append", "audio": 5}), "invalid_audio"),
    ("wrong field type", json.dumps({"type": "conversation.item.truncate", "item_id": 3, "content_index": 0,
                                     "audio_end_ms": 10}), "invalid_value"),
    ("missing field", json.dumps({"type": "conversation.item.truncate", "item_id": "x"}),
     "missing_required_parameter"),
    ("commit with nothing", json.dumps({"type": "input_audio_buffer.commit"}), "input_audio_buffer_commit_empty"),
    ("cancel with nothing", json.dumps({"type": "response.cancel"}), "response_cancel_not_active"),
    ("truncate unknown item", json.dumps({"type": "conversation.item.truncate", "item_id": "item_nope",
                                          "content_index": 0, "audio_end_ms": 10}), "item_not_found"),
    ("delete unknown item", json.dumps({"type": "conversation.item.delete", "item_id": "nope"}), "item_not_found"),
    ("bad sample rate", json.dumps({"type": "session.update", "session": {"type": "realtime", "audio": {
        "input": {"format": {"type": "audio/pcm", "rate": 16000}}}}}), "invalid_value"),
    ("bad threshold", json.dumps({"type": "session.update", "session": {"type": "realtime", "audio": {
        "input": {"turn_detection": {"type": "server_vad", "threshold": 7}}}}}), "invalid_value"),
    ("image not a data url", json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_image",
                                                        "image_url": "http://example.com/a.png"}]}}),
     "invalid_image"),
    ("bad role", json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "robot", "content": [{"type": "input_text", "text": "hi"}]}}), "invalid_value"),
    ("previous item missing", json.dumps({"type": "conversation.item.create", "previous_item_id": "item_x",
                                          "item": {"type": "message", "role": "user",
                                                   "content": [{"type": "input_text", "text": "hi"}]}}),
     "item_not_found"),
]


@pytest.mark.parametrize("name,raw,code", MALFORMED, ids=[m[0] for m in MALFORMED])
async def test_malformed_event_gets_an_error_and_the_session_survives(client, name, raw, code):
    await client.send_raw(raw)
    error = await client.expect("error")
    assert error["error"]["code"] == code, error
    assert error["error"]["message"]
    events = await ask_text(client, "still there?")
    assert events[-1]["response"]["status"] == "completed"


async def test_error_echoes_the_client_event_id(client):
    await client.send("response.cancel", event_id="evt_42")
    error = await client.expect("error")
    assert error["error"]["event_id"] == "evt_42"


async def test_oversized_event_is_refused_with_an_error(client):
    from engine.realtime.client_events import MAX_EVENT_BYTES

    await client.send_raw(json.dumps({"type": "conversation.item.create", "padding": "x" * (MAX_EVENT_BYTES + 10)}))
    error = await client.expect("error")
    assert error["error"]["code"] == "event_too_large"
    assert (await ask_text(client, "ok?"))[-1]["response"]["status"] == "completed"


async def test_out_of_order_events(client):
    await client.send("response.create")
    await client.expect("response.created")
    await client.send("response.create")  # a second while the first runs
    error = await client.expect("error")
    assert error["error"]["code"] == "conversation_already_has_active_response"
    await client.expect("response.done")
    await client.send("response.cancel")  # nothing active any more
    assert (await client.expect("error"))["error"]["code"] == "response_cancel_not_active"


async def test_unusable_image_is_reported_and_dropped(client):
    await client.send("conversation.item.create", item={"type": "message", "role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64," + base64.b64encode(b"garbage").decode()},
        {"type": "input_text", "text": "what is this"}]})
    error = await client.expect("error")
    assert error["error"]["code"] == "invalid_image"
    events = await ask_text(client, "and now?")
    assert events[-1]["response"]["status"] == "completed"


# --- responses, cancel, truncate ----------------------------------------------------------------------

async def test_text_turn_streams_a_spoken_reply(client, served):
    backend, _, _ = served
    events = await ask_text(client, "hello")
    kinds = [e["type"] for e in events]
    order = ["response.created", "response.output_item.added", "response.content_part.added",
             "response.output_audio_transcript.delta", "response.output_audio.delta", "response.output_audio.done",
             "response.output_audio_transcript.done", "response.output_item.done", "response.done"]
    positions = [kinds.index(k) for k in order]
    assert positions == sorted(positions), kinds
    assert transcript_of(events) == " ".join(backend.phrases)
    assert events[-1]["response"]["status"] == "completed"
    assert audio_of(events).size == sum(tone_chunk(p).audio.size for p in backend.phrases)
    assert backend.requests[-1].turns[-1].text == "hello"


async def test_text_only_modality(client):
    await client.send("session.update", session={"type": "realtime", "output_modalities": ["text"]})
    await client.expect("session.updated")
    events = await ask_text(client, "hello")
    assert any(e["type"] == "response.output_text.delta" for e in events)
    assert not any("audio" in e["type"] for e in events)


async def test_cancel_stops_deltas_at_once(client, served):
    backend, _, _ = served
    backend.step_s = 0.2
    await start_reply(client, "talk")
    first = await client.expect("response.output_audio.delta")
    await client.send("response.cancel", response_id=first["response_id"])
    after = await client.collect_until("response.done")
    done = after[-1]
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"]["reason"] == "client_cancelled"
    # deltas already on the wire may still land before response.done; nothing of it arrives afterwards
    late = await client.quiet(0.8)
    assert not [e for e in late if e.get("response_id") == first["response_id"]]
    assert backend.steps_run < len(backend.phrases)  # generation stopped, not just delivery


async def test_truncate_keeps_only_the_heard_words_and_the_next_turn_sees_that(client, served):
    backend, _, _ = served
    events = await ask_text(client, "tell me")
    item_id = next(e for e in events if e["type"] == "response.output_item.added")["item"]["id"]
    # Each scripted word lasts 300 ms: at 1000 ms the listener heard "Hello there." and "This" (0.6-0.9 s),
    # and half of "is" (0.9-1.2 s midpoint 1.05 s) had not played.
    await client.send("conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=1000)
    truncated = await client.expect("conversation.item.truncated")
    assert truncated["audio_end_ms"] == 1000
    await client.send("conversation.item.retrieve", item_id=item_id)
    item = (await client.expect("conversation.item.retrieved"))["item"]
    assert item["content"][0]["transcript"] == "Hello there. This"
    await ask_text(client, "what did you say?")
    context = backend.requests[-1].turns
    assert context[-2].role == "assistant" and context[-2].text == "Hello there. This"


async def test_a_model_failure_fails_the_response_not_the_session(client, served):
    backend, _, _ = served
    backend.fail_at_step = 1
    events = await ask_text(client, "hello")
    error = next(e for e in events if e["type"] == "error")
    assert error["error"]["code"] == "model_failure" and "out of memory" in error["error"]["message"]
    done = events[-1]["response"]
    assert done["status"] == "failed" and done["status_details"]["error"]["code"] == "model_failure"
    assert done["output"][0]["content"][0]["transcript"] == backend.phrases[0]  # what was said stays said
    backend.fail_at_step = None
    assert (await ask_text(client, "again"))[-1]["response"]["status"] == "completed"


async def test_truncate_past_the_audio_is_an_error(client):
    events = await ask_text(client, "tell me")
    item_id = next(e for e in events if e["type"] == "response.output_item.added")["item"]["id"]
    await client.send("conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=10_000_000)
    assert (await client.expect("error"))["error"]["code"] == "audio_end_ms_out_of_range"


async def test_items_create_retrieve_delete_and_ordering(client):
    await client.send("conversation.item.create", item={"id": "item_a", "type": "message", "role": "user",
                                                        "content": [{"type": "input_text", "text": "A"}]})
    created = await client.expect("conversation.item.created")
    assert created["item"]["id"] == "item_a"
    await client.send("conversation.item.create", item={"id": "item_a", "type": "message", "role": "user",
                                                        "content": [{"type": "input_text", "text": "again"}]})
    assert (await client.expect("error"))["error"]["code"] == "duplicate_item_id"
    await client.send("conversation.item.create", previous_item_id="root",
                      item={"id": "item_0", "type": "message", "role": "system",
                            "content": [{"type": "input_text", "text": "first"}]})
    assert (await client.expect("conversation.item.created"))["previous_item_id"] is None
    await client.send("conversation.item.delete", item_id="item_a")
    assert (await client.expect("conversation.item.deleted"))["item_id"] == "item_a"


async def test_screenshot_item_is_read_before_the_reply(client, served):
    backend, _, _ = served
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    await client.send("conversation.item.create", item={"type": "message", "role": "user", "content": [
        {"type": "input_image", "image_url": data_url}, {"type": "input_text", "text": "what is on my screen?"}]})
    await client.send("response.create")
    await client.expect("response.done")
    turn = backend.requests[-1].turns[-1]
    assert turn.images and turn.images[0].text == "SCREEN TEXT"


async def test_a_screenshot_is_prepared_for_the_question_as_soon_as_it_is_read(client, served):
    backend, _, _ = served
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    await client.send("conversation.item.create", item={"type": "message", "role": "user", "content": [
        {"type": "input_image", "image_url": data_url}]})
    await client.expect("conversation.item.created")
    await _until(lambda: backend.prepared and backend.prepared[-1].turns)
    assert backend.prepared[-1].turns[-1].images[0].text == "SCREEN TEXT"  # before any question


async def test_a_screenshot_read_while_its_question_is_spoken_reaches_the_listener(client, served):
    backend, _, _ = served
    speech = say("What gate does my flight leave from?", "flite:slt")
    silence = np.zeros(24000, np.float32)
    await client.append_audio(np.concatenate([silence[:12000], speech[:len(speech) // 2]]))
    await client.expect("input_audio_buffer.speech_started")
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    await client.send("conversation.item.create", item={"type": "message", "role": "user", "content": [
        {"type": "input_image", "image_url": data_url}]})
    await _until(lambda: backend.listeners[-1].contexts)
    assert backend.listeners[-1].contexts[-1].turns[-1].images[0].text == "SCREEN TEXT"
    await client.append_audio(np.concatenate([speech[len(speech) // 2:], silence]))
    done = await client.expect("response.done")
    assert done["response"]["status"] == "completed"


async def _until(condition, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


# --- audio turns ------------------------------------------------------------------------------------

async def test_server_vad_turn_from_real_speech(client, served):
    backend, _, _ = served
    speech = say("What is two plus two?", "flite:slt")
    silence = np.zeros(int(1.0 * 24000), np.float32)
    await client.append_audio(np.concatenate([silence[:12000], speech, silence]))
    started = await client.expect("input_audio_buffer.speech_started")
    stopped = await client.expect("input_audio_buffer.speech_stopped")
    assert started["item_id"] == stopped["item_id"]
    assert 200 <= started["audio_start_ms"] <= 500  # onset at 500 ms, minus the 300 ms prefix padding
    assert stopped["audio_end_ms"] > 500 + len(speech) / 24
    committed = await client.expect("input_audio_buffer.committed")
    assert committed["item_id"] == started["item_id"]
    transcription = await client.expect("conversation.item.input_audio_transcription.completed")
    assert transcription["transcript"] == backend.transcript
    done = await client.expect("response.done")
    assert done["response"]["status"] == "completed"


async def test_manual_commit_mode(client, served):
    backend, _, _ = served
    await client.send("session.update", session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
    session = (await client.expect("session.updated"))["session"]
    assert session["audio"]["input"]["turn_detection"] is None
    await client.append_audio(say("Hello there", "espeak:en-us"))
    await client.send("input_audio_buffer.commit")
    committed = await client.expect("input_audio_buffer.committed")
    await client.expect("conversation.item.input_audio_transcription.completed")
    assert not any(e["type"] == "response.created" for e in await client.quiet(0.3))  # nothing unasked
    await client.send("response.create")
    done = await client.expect("response.done")
    assert done["response"]["status"] == "completed"
    assert backend.requests[-1].turns[-1].text == backend.transcript
    assert committed["item_id"]


async def test_speech_during_a_reply_interrupts_it(client, served):
    backend, _, _ = served
    backend.step_s = 0.3
    await start_reply(client, "talk")
    first = await client.expect("response.output_audio.delta")
    await client.append_audio(np.concatenate([say("Wait, stop please", "flite:awb"), np.zeros(4800, np.float32)]))
    await client.expect("input_audio_buffer.speech_started")
    done = await client.expect("response.done")
    assert done["response"]["id"] == first["response_id"]
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"]["reason"] == "turn_detected"


async def test_beta_clients_get_beta_event_names(served):
    _, url, _ = served
    ws = await websockets.connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}",
                                                           "OpenAI-Beta": "realtime=v1"}, max_size=None)
    client = RealtimeTestClient(ws)
    await client.expect("session.created")
    await client.send("session.update", session={"modalities": ["text", "audio"], "input_audio_format": "pcm16",
                                                  "turn_detection": {"type": "server_vad", "silence_duration_ms": 300}})
    updated = await client.expect("session.updated")
    assert updated["session"]["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 300
    events = await ask_text(client, "hi")
    kinds = {e["type"] for e in events}
    assert "response.audio.delta" in kinds and "response.audio_transcript.delta" in kinds
    assert "response.output_audio.delta" not in kinds
    await client.close()


async def test_closing_mid_reply_leaves_the_server_serving(served):
    backend, url, server = served
    backend.step_s = 0.2
    client = await RealtimeTestClient.connect(url, TOKEN)
    await client.send("response.create")
    await client.expect("response.created")
    await client.close()
    await asyncio.sleep(0.2)
    assert not server.sessions
    again = await RealtimeTestClient.connect(url, TOKEN)
    assert (await ask_text(again, "hi"))[-1]["response"]["status"] == "completed"
    await again.close()


async def test_a_response_cancelled_before_its_task_ran_is_still_announced_and_closed():
    """Found by the app's barge-in storm: a cancel that came before the response's first step left the
    client waiting for a response.created and a response.done that never came."""
    from engine.realtime.conversation import Conversation
    from engine.realtime.reply_run import ReplyRun
    from engine.realtime.response import Response

    session = ScriptedBackend().open_session()
    events, finished = [], []
    run = ReplyRun(session, lambda: asyncio.sleep(0, result=None))
    response = Response(run, Conversation(), lambda name, **fields: events.append((name, fields)), True,
                        finished.append)
    response.cancel()  # before the loop ran the response's task even once
    await asyncio.wait_for(response.wait(), 5)
    names = [name for name, _ in events]
    assert names[0] == "response.created" and names[-1] == "response.done", names
    assert events[-1][1]["response"]["status"] == "cancelled" and finished == [response]
    assert not any(name.endswith(".delta") for name in names)
