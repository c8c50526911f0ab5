"""The omni backend behind the real Realtime server, over a real WebSocket, on the tiny Qwen2.5-Omni.

The model has random weights (engine/backends/omni/tiny.py): its words are random letters and its speech
is noise, but every stage is the real one: audio and images reach the thinker, the talker and the chunked
vocoder stream audio deltas, and cancel/truncate go through the session exactly as with real weights.
"""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from engine.audio.pcm import PROTOCOL_RATE
from engine.backends.omni.loading import check_memory, load
from engine.backends.omni.settings import NotEnoughMemory, OmniLoadError, OmniSettings
from engine.backends.omni.token2wav import ChunkSettings, Token2Wav
from tests.engine.realtime_client import RealtimeTestClient, audio_of, engine_fixtures, transcript_of

torch.set_num_threads(1)
TOKEN = "omni-token"
SETTINGS = OmniSettings(model="tiny", seed=3, threads=1, max_reply_tokens=40, max_speech_s=3.0)


engine, server_url = engine_fixtures(TOKEN, "omni", omni=SETTINGS)


@pytest.fixture
async def client(server_url):
    client = await RealtimeTestClient.with_session(server_url, TOKEN, instructions="Be brief.",
                                                   audio={"input": {"turn_detection": None}})
    yield client
    await client.close()


def png() -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (320, 200), "white")
    ImageDraw.Draw(image).rectangle((40, 40, 200, 120), fill=(200, 30, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def ask(client: RealtimeTestClient, text: str) -> list[dict]:
    await client.send("conversation.item.create", item={"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": text}]})
    await client.send("response.create")
    return await client.collect_until("response.done", timeout=120)


async def test_audio_and_image_in_give_streamed_speech_out(engine, client):
    await client.send("conversation.item.create", item={"type": "message", "role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64," + base64.b64encode(png()).decode()}]})
    await client.expect("conversation.item.created")
    speech = np.sin(np.arange(PROTOCOL_RATE) * 0.05).astype(np.float32) * 0.3
    await client.append_audio(speech)
    await client.send("input_audio_buffer.commit")
    await client.expect("input_audio_buffer.committed")
    await client.send("response.create")
    start = len(client.events)
    events = await client.collect_until("response.done", timeout=120)
    done = events[-1]
    assert done["response"]["status"] == "completed"
    prompt = engine.backend.last_prompt
    assert prompt.counts["audios"] == 1 and prompt.counts["images"] == 1  # the thinker got both, natively
    deltas = [i for i, e in enumerate(events) if e["type"] == "response.output_audio.delta"]
    audio = audio_of(events, done["response"]["id"])
    assert audio.size > PROTOCOL_RATE and np.abs(audio).max() > 0.01
    assert transcript_of(events).strip()
    # Streamed: the first audio left long before the reply was over.
    arrival = client.arrival[start:]
    assert arrival[-1] - arrival[deltas[0]] > 0.3, (arrival[deltas[0]], arrival[-1])
    # ...and it is the audio the vocoder makes of the same codes in one pass, within 30 dB SNR (measured
    # 47 dB: the chunk window's error plus PCM16 rounding; tests/engine/test_omni_token2wav.py has the rest).
    codes, seed = engine.backend.last_speech
    whole = Token2Wav(engine.backend.loaded.model.token2wav, engine.backend.speaker("default"), ChunkSettings(),
                      seed=seed).whole(codes)
    assert whole.size == audio.size
    error = float(((whole - audio) ** 2).sum())
    assert 10 * np.log10(float((whole ** 2).sum()) / error) > 30.0


async def test_cancel_mid_stream_stops_the_deltas_and_the_model(engine, client):
    await client.send("conversation.item.create", item={"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "Tell me a long story."}]})
    await client.send("response.create")
    first = await client.expect("response.output_audio.delta", timeout=60)
    await client.send("response.cancel")
    done = await client.expect("response.done")
    assert done["response"]["status"] == "cancelled"
    late = await client.quiet(1.0)
    assert not [e for e in late if e.get("response_id") == first["response_id"]]
    # The model stopped at its next step: neither stage holds the model any more.
    assert not engine.backend.lm_lock.locked() and not engine.backend.voice_lock.locked()


async def test_truncate_keeps_only_the_heard_words_in_the_next_prompt(engine, client):
    events = await ask(client, "Count slowly.")
    done = events[-1]
    assert done["response"]["status"] == "completed"
    item_id = done["response"]["output"][0]["id"]
    said = transcript_of(events).strip()
    heard_ms = int(audio_of(events).size / PROTOCOL_RATE * 1000 * 0.4)
    await client.send("conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=heard_ms)
    await client.expect("conversation.item.truncated")
    await client.send("conversation.item.retrieve", item_id=item_id)
    heard = (await client.expect("conversation.item.retrieved"))["item"]["content"][0]["transcript"]
    assert heard and len(heard) < len(said) and said.startswith(heard), (heard, said)

    await ask(client, "Go on.")
    prompt = engine.backend.loaded.processors.tokenizer.decode(engine.backend.last_prompt.input_ids[0])
    assert f"<|im_start|>assistant\n{heard}<|im_end|>" in prompt
    assert said not in prompt  # the unheard rest never reaches the model


def test_errors_say_what_to_do(tmp_path):
    with pytest.raises(OmniLoadError, match="does not hold a Qwen2.5-Omni checkpoint"):
        load(OmniSettings(model=str(tmp_path)))
    with pytest.raises(OmniLoadError, match="models fetch qwen2.5-omni-3b"):
        load(OmniSettings(model="qwen2.5-omni-3b"))
    if not torch.cuda.is_available():
        with pytest.raises(OmniLoadError, match="needs an NVIDIA GPU with CUDA"):
            load(OmniSettings(model="tiny", quantization="int4"))
        with pytest.raises(OmniLoadError, match="no CUDA GPU is available"):
            load(OmniSettings(model="tiny", device="cuda"))
    # The real path: a checkpoint far larger than this machine's memory (a sparse file: no disk used) is
    # refused before a byte of it is read.
    (tmp_path / "config.json").write_text("{}")
    with open(tmp_path / "model-00001-of-00001.safetensors", "wb") as huge:
        huge.truncate(4 * 10**12)
    with pytest.raises(NotEnoughMemory, match=r"not enough RAM for this omni model: it needs about 8001\.5 GB"):
        load(OmniSettings(model=str(tmp_path), device="cpu"))
    # Beside it, the arithmetic for other devices and quantizations (the GPU and a real 7B are not here).
    with pytest.raises(NotEnoughMemory, match=r"not enough RAM .* needs about 45\.5 GB .* try --omni-quantization"):
        check_memory(22_000_000_000, "cpu", "none", available=16_000_000_000)
    with pytest.raises(NotEnoughMemory, match="not enough GPU memory"):
        check_memory(22_000_000_000, "cuda", "none", available=12_000_000_000)
    check_memory(22_000_000_000, "cuda", "int4", available=12_000_000_000)


def test_the_default_engine_never_imports_torch():
    code = ("import sys, engine.assembly, engine.cli; engine.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.stdout.strip() == "[]", out.stderr


def test_serve_reports_missing_weights_and_exits(tmp_path):
    out = subprocess.run([sys.executable, "-m", "engine", "serve", "--backend", "omni", "--omni-model",
                          str(tmp_path), "--port", "0", "--token", "t"], capture_output=True, text=True,
                         timeout=180, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
                         env={**os.environ, "CONFIDE_THREADS": "1"})
    assert out.returncode == 1
    assert "does not hold a Qwen2.5-Omni checkpoint" in out.stderr




async def test_text_only_session_streams_text_once(client):
    await client.send("session.update", session={"type": "realtime", "output_modalities": ["text"]})
    await client.expect("session.updated")
    events = await ask(client, "Say something.")
    assert events[-1]["response"]["status"] == "completed"
    assert not [e for e in events if "audio" in e["type"]]
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    final = next(e["text"] for e in events if e["type"] == "response.output_text.done")
    assert deltas == final and 5 < len(final) <= SETTINGS.max_reply_tokens  # one byte a token: none repeated
    half = len(final) // 2
    assert final[:half] != final[half:2 * half]
