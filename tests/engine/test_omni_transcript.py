"""The user's words as text beside the omni model: real Whisper (the embedded backend's, from the model store)
transcribes spoken turns through the real Realtime server while the tiny Qwen2.5-Omni answers the audio itself.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import replace

import numpy as np
import torch

from engine.audio.pcm import PROTOCOL_RATE
from engine.backends.omni.settings import OmniSettings
from engine.backends.omni.transcripts import load_asr
from engine.cli import build_parser
from engine.models.store import ModelStore
from engine.realtime.serve_command import omni_arguments, omni_settings
from tests.engine.realtime_client import RealtimeTestClient, audio_of, engine_fixtures
from tests.speakers import say

torch.set_num_threads(1)
TOKEN = "omni-transcript-token"
SETTINGS = OmniSettings(model="tiny", seed=5, threads=1, max_reply_tokens=24, max_speech_s=2.0)
COMPLETED = "conversation.item.input_audio_transcription.completed"


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


engine, server_url = engine_fixtures(TOKEN, "omni", omni=SETTINGS)


async def connect(url: str, turn_detection: dict | None) -> RealtimeTestClient:
    return await RealtimeTestClient.with_session(url, TOKEN, instructions="Be brief.",
                                                 audio={"input": {"turn_detection": turn_detection}})


async def test_a_spoken_turn_is_transcribed_while_the_model_answers_its_audio(engine, server_url):
    client = await connect(server_url, {"type": "server_vad", "silence_duration_ms": 400})
    try:
        speech = say("Please tell me what the weather will be like tomorrow morning.")
        quiet = np.zeros(PROTOCOL_RATE // 2, np.float32)
        await client.append_audio(np.concatenate([quiet, speech, *[quiet] * 3]), realtime=True)  # as from a mic
        events = await client.collect_until("response.done", timeout=120)
        if not [e for e in events if e["type"] == COMPLETED]:
            events.append(await client.expect(COMPLETED))
    finally:
        await client.close()
    committed = next(e for e in events if e["type"] == "input_audio_buffer.committed")
    completed = [e for e in events if e["type"] == COMPLETED]
    assert [e["item_id"] for e in completed] == [committed["item_id"]]
    assert words(completed[0]["transcript"]) == words("Please tell me what the weather will be like tomorrow morning")
    assert [e for e in events if e["type"] == "conversation.item.input_audio_transcription.delta"]  # live partials
    done = next(e for e in events if e["type"] == "response.done")
    assert done["response"]["status"] == "completed" and audio_of(events, done["response"]["id"]).size
    # The thinker heard the turn as audio; the transcript is for the client (and for later, see below).
    prompt = engine.backend.loaded.processors.tokenizer.decode(engine.backend.last_prompt.input_ids[0])
    assert engine.backend.last_prompt.counts["audios"] == 1 and "weather" not in prompt


async def test_the_reply_does_not_wait_for_the_transcript(engine, server_url):
    # Whisper is held until the client has the reply's first audio: a reply that waited for the
    # transcript would never start (no timing involved).
    transcribe, heard_reply = engine.backend.asr.transcribe, threading.Event()

    def held_transcribe(*args, **kwargs):
        heard_reply.wait(60)
        return transcribe(*args, **kwargs)

    engine.backend.asr.transcribe = held_transcribe
    client = await connect(server_url, {"type": "server_vad", "silence_duration_ms": 400})
    try:
        speech = say("Is it going to rain this afternoon?")
        quiet = np.zeros(PROTOCOL_RATE // 2, np.float32)
        await client.append_audio(np.concatenate([quiet, speech, quiet, quiet]))
        start = len(client.events)
        await client.expect("response.output_audio.delta", timeout=60)
        assert not [e for e in client.events[start:] if e["type"] == COMPLETED]
        heard_reply.set()
        events = await client.collect_until("response.done", timeout=120)
        if not [e for e in events if e["type"] == COMPLETED]:
            events.append(await client.expect(COMPLETED))
    finally:
        heard_reply.set()
        engine.backend.asr.transcribe = transcribe
        await client.close()
    completed = next(e for e in events if e["type"] == COMPLETED)
    assert words(completed["transcript"]) == words("Is it going to rain this afternoon")


async def test_old_turns_past_the_audio_window_reach_the_thinker_as_their_transcript(engine, server_url):
    client = await connect(server_url, None)  # manual turns: commit each, answer once at the end
    sentences = ["How many people live in Paris?", "Is it going to rain this afternoon?"] + [
        f"Number {n}." for n in ("one", "two", "three", "four", "five", "six", "seven")]
    transcripts = []
    try:
        for sentence in sentences:
            await client.append_audio(say(sentence))
            await client.send("input_audio_buffer.commit")
            transcripts.append((await client.expect(COMPLETED))["transcript"])
        await client.send("response.create")
        events = await client.collect_until("response.done", timeout=120)
    finally:
        await client.close()
    assert events[-1]["response"]["status"] == "completed"
    prompt_inputs = engine.backend.last_prompt
    prompt = engine.backend.loaded.processors.tokenizer.decode(prompt_inputs.input_ids[0])
    # The conversation keeps audio for the last 8 user turns: the oldest is text now, not nothing.
    assert prompt_inputs.counts["audios"] == 8
    user_turns = re.findall(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", prompt, re.S)
    assert len(user_turns) == 9
    assert words(transcripts[0]) == words(sentences[0]) and user_turns[0] == transcripts[0].strip()
    assert all(turn.startswith("<|audio_bos|>") for turn in user_turns[1:])


def test_transcription_is_optional_and_never_downloads(tmp_path, caplog):
    store = ModelStore()
    assert load_asr(OmniSettings(transcribe=False), store) is None
    # Whisper not on disk (an empty cache and no package holding it): one warning, and no transcripts.
    spec = store.spec("whisper-tiny.en")
    unpackaged = replace(spec, files=tuple(replace(f, parts=()) for f in spec.files))
    bare = ModelStore(cache_dir=tmp_path, catalog=[unpackaged, store.spec("silero-vad")])
    with caplog.at_level(logging.INFO, logger="engine.backends.omni.transcripts"):
        assert load_asr(OmniSettings(), bare) is None
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "no input transcripts" in caplog.text and "whisper-tiny.en" in caplog.text
    assert not list(tmp_path.iterdir())  # nothing was fetched or written

    parser = build_parser()
    off = parser.parse_args(["serve", "--backend", "omni", "--omni-model", "tiny", "--no-omni-transcribe"])
    on = parser.parse_args(["serve", "--backend", "omni", "--omni-model", "tiny"])
    assert omni_settings(off).transcribe is False and omni_settings(on).transcribe is True
    assert "--no-omni-transcribe" in omni_arguments(off)  # the bench's own engine gets the same choice
