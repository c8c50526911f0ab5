"""The whole engine with the real embedded models over a real WebSocket: speech in, speech out."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest

from engine.audio.pcm import PROTOCOL_RATE, resample
from tests.engine.realtime_client import RealtimeTestClient, audio_of, engine_fixtures, transcript_of
from tests.speakers import say

TOKEN = "end-to-end-token"
SILENCE = np.zeros(PROTOCOL_RATE, np.float32)
NUMBER_WORDS = {"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six",
                "7": "seven", "8": "eight", "9": "nine", "10": "ten"}


def words(text: str) -> list[str]:
    tokens = re.findall(r"[a-z0-9']+", text.lower())
    return [NUMBER_WORDS.get(t, t) for t in tokens]


engine, server_url = engine_fixtures(TOKEN, seed=7)


@pytest.fixture
async def client(server_url):
    client = await RealtimeTestClient.with_session(
        server_url, TOKEN, instructions="You are a helpful voice assistant. Answer in one short sentence.")
    yield client
    await client.close()


def transcribe(engine, audio24k: np.ndarray) -> str:
    return engine.backend.asr.transcribe(resample(audio24k, PROTOCOL_RATE, 16_000))


async def speak_and_wait(client: RealtimeTestClient, text: str, voice: str) -> list[dict]:
    start = len(client.events)
    await client.append_audio(np.concatenate([SILENCE[:9600], say(text, voice), SILENCE]))
    await client.expect("response.done", timeout=120)
    await client.append_audio(SILENCE[:2400])
    return client.events[start:]


@pytest.mark.slow
@pytest.mark.parametrize("voice", ["flite:slt", "espeak:en-us", "piper:joe"])
async def test_spoken_question_gets_a_relevant_spoken_answer(engine, client, voice):
    events = await speak_and_wait(client, "What is two plus two?", voice)
    heard = next(e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed")
    assert {"two", "plus"} <= set(words(heard["transcript"])), heard["transcript"]
    done = [e for e in events if e["type"] == "response.done"][-1]
    assert done["response"]["status"] == "completed"
    answer = transcript_of(events)
    assert "four" in words(answer), answer
    # The audio says what the transcript says.
    reply_audio = audio_of(events, done["response"]["id"])
    assert reply_audio.size > PROTOCOL_RATE // 2
    spoken_back = set(words(transcribe(engine, reply_audio)))
    expected = set(words(answer))
    assert len(spoken_back & expected) >= 0.7 * len(expected), (answer, spoken_back)


@pytest.mark.slow
async def test_transcripts_contain_the_words_across_voices(client):
    for voice, sentence in (("flite:awb", "Please remind me to call my sister tomorrow."),
                            ("espeak:en+f3", "What is the weather like in Paris?")):
        events = await speak_and_wait(client, sentence, voice)
        heard = next(e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed")
        got = set(words(heard["transcript"]))
        expected = set(words(sentence)) - {"the", "in", "to", "my", "is", "what", "like"}
        assert len(got & expected) >= len(expected) - 1, (sentence, heard["transcript"])


def screenshot_png(lines: list[str]) -> bytes:
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (1280, 720), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype("DejaVuSans.ttf", 22) if _has_font("DejaVuSans.ttf") else ImageFont.load_default(22)
    draw.rectangle((0, 0, 1280, 40), fill=(40, 40, 60))
    draw.text((16, 8), "Calendar - Confide test", fill="white", font=font)
    for index, line in enumerate(lines):
        draw.text((60, 100 + index * 44), line, fill="black", font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _has_font(name: str) -> bool:
    from PIL import ImageFont

    try:
        ImageFont.truetype(name, 10)
        return True
    except OSError:
        return False


@pytest.mark.slow
async def test_screen_question_is_answered_from_the_screenshot(client):
    png = screenshot_png(["Dentist appointment: Thursday at 4:30 PM",
                          "Lunch with Priya: Friday at noon", "Gym: Saturday morning"])
    await client.send("conversation.item.create", item={"type": "message", "role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64," + base64.b64encode(png).decode()}]})
    await client.expect("conversation.item.created")
    events = await speak_and_wait(client, "When is my dentist appointment?", "flite:slt")
    answer = transcript_of(events).lower()
    assert "thursday" in answer or "4:30" in answer or "four thirty" in answer, answer


@pytest.mark.slow
async def test_cancel_stops_the_deltas(client):
    await client.send("conversation.item.create", item={"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "Tell me a long story about a dragon who bakes bread."}]})
    await client.send("response.create")
    first = await client.expect("response.output_audio.delta", timeout=60)
    await client.send("response.cancel")
    done = await client.expect("response.done")
    assert done["response"]["status"] == "cancelled"
    late = await client.quiet(1.0)
    assert not [e for e in late if e.get("response_id") == first["response_id"]]


@pytest.mark.slow
async def test_truncated_reply_leaves_only_the_heard_part_in_context(engine, client, monkeypatch):
    await client.send("conversation.item.create", item={"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "Count from one to ten, as words, separated by commas."}]})
    await client.send("response.create")
    events = await client.collect_until("response.done", timeout=120)
    item_id = next(e for e in events if e["type"] == "response.output_item.added")["item"]["id"]
    full = transcript_of(events)
    assert "ten" in words(full), full
    # The listener stopped playback a little way in: keep what was heard by then.
    await client.send("conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=1500)
    await client.expect("conversation.item.truncated")
    await client.send("conversation.item.retrieve", item_id=item_id)
    kept = (await client.expect("conversation.item.retrieved"))["item"]["content"][0]["transcript"]
    assert kept and len(kept) < len(full) and full.startswith(kept.rstrip(",. ")), (kept, full)
    assert "ten" not in words(kept)
    # The audio up to 1500 ms says what was kept: every whole word in it was kept (the last kept word
    # may be cut half-way, past recognition).
    heard_audio = audio_of(events)[: int(1.5 * PROTOCOL_RATE)]
    recognised = set(words(transcribe(engine, heard_audio)))
    assert set(words(kept)[:-1]) <= recognised, (kept, recognised)
    # The next turn's context holds only the heard part (watched on the real model's input).
    seen_messages = []
    real_stream = engine.backend.llm.stream

    def watching_stream(messages, **kwargs):
        seen_messages.append(list(messages))
        return real_stream(messages, **kwargs)

    monkeypatch.setattr(engine.backend.llm, "stream", watching_stream)
    await client.send("conversation.item.create", item={"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "What did you just say?"}]})
    await client.send("response.create")
    await client.collect_until("response.done", timeout=120)
    assistant_turns = [m["content"] for m in seen_messages[-1] if m["role"] == "assistant"]
    assert assistant_turns[-1] == kept, (assistant_turns, kept)


@pytest.mark.slow
async def test_the_openai_sdk_drives_the_engine_unchanged(server_url):
    from openai import AsyncOpenAI

    http_url = server_url.replace("ws://", "http://").removesuffix("/realtime")
    client = AsyncOpenAI(base_url=http_url, api_key=TOKEN)
    async with client.realtime.connect(model="confide") as connection:
        await connection.session.update(session={
            "type": "realtime",
            "instructions": "Answer in one short sentence.",
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                                "turn_detection": {"type": "server_vad", "silence_duration_ms": 400}},
                      "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"}},
        })
        speech = np.concatenate([SILENCE[:9600], say("What is the capital of France?", "piper:joe"), SILENCE])
        pcm = (np.clip(speech, -1, 1) * 32767).astype("<i2").tobytes()
        for offset in range(0, len(pcm), 9600):
            await connection.input_audio_buffer.append(audio=base64.b64encode(pcm[offset:offset + 9600]).decode())
        seen: dict[str, object] = {}
        answer, audio_bytes = "", 0
        async for event in connection:
            seen.setdefault(event.type, event)
            if event.type == "response.output_audio_transcript.delta":
                answer += event.delta
            elif event.type == "response.output_audio.delta":
                audio_bytes += len(base64.b64decode(event.delta))
            elif event.type == "response.done":
                break
        for kind in ("session.updated", "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                     "conversation.item.input_audio_transcription.completed", "response.output_audio.delta",
                     "response.output_audio_transcript.delta"):
            assert kind in seen, (kind, sorted(seen))
        assert "france" in seen["conversation.item.input_audio_transcription.completed"].transcript.lower()
        assert "paris" in answer.lower(), answer
        assert audio_bytes > PROTOCOL_RATE  # at least half a second of speech

        # Cancel mid-stream: status cancelled, and nothing more of that response.
        await connection.conversation.item.create(item={"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "Tell me a long story about the sea."}]})
        await connection.response.create()
        response_id = None
        async for event in connection:
            if event.type == "response.output_audio.delta":
                response_id = event.response_id
                await connection.response.cancel()
                break
        async for event in connection:
            if event.type == "response.done":
                assert event.response.status == "cancelled"
                item_id = event.response.output[0].id
                break
        await connection.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=300)
        async for event in connection:
            assert getattr(event, "response_id", None) != response_id or event.type == "response.done"
            if event.type == "conversation.item.truncated":
                assert event.audio_end_ms == 300
                break
