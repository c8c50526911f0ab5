"""`confide-engine converse question.wav [--image screen.png] -o reply.wav`: one spoken turn, offline.

Runs the same backend the server runs, without a network: handy for trying models and for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np

from engine.audio.pcm import PROTOCOL_RATE, AudioFormatError, read_wav, resample, write_wav


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("converse", help="answer one spoken question from a WAV file, offline")
    parser.add_argument("question", type=Path, help="a WAV file with the spoken question")
    parser.add_argument("--image", type=Path, help="a screenshot (PNG/JPEG) the question is about")
    parser.add_argument("-o", "--output", type=Path, help="where to write the spoken reply (WAV, 24 kHz)")
    parser.add_argument("--llm", help="language model id (see `models list`)")
    parser.add_argument("--instructions", help="system instructions instead of the default")
    parser.add_argument("--seed", type=int, help="sampling seed, for reproducible replies")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        audio, rate = read_wav(args.question)
    except (AudioFormatError, OSError) as error:
        print(f"confide-engine: cannot read the question: {error}", file=sys.stderr)
        return 1
    image = None
    if args.image:
        try:
            image = args.image.read_bytes()
        except OSError as error:
            print(f"confide-engine: cannot read the image: {error}", file=sys.stderr)
            return 1
    from engine.assembly import build_engine
    from engine.models.store import ModelUnavailable

    try:
        engine = build_engine(llm=args.llm, warm_up=False, seed=args.seed)
    except ModelUnavailable as error:
        print(f"confide-engine: {error}", file=sys.stderr)
        return 1
    try:
        result = asyncio.run(converse(engine.backend, resample(audio, rate, PROTOCOL_RATE), image,
                                      args.instructions))
    except ValueError as error:
        print(f"confide-engine: {error}", file=sys.stderr)
        return 1
    finally:
        engine.backend.close()
    print(f"you: {result.question}")
    print(f"confide: {result.answer}")
    if args.output:
        write_wav(args.output, result.audio, PROTOCOL_RATE)
    print(f"(transcribed in {result.transcribe_ms:.0f} ms; first audio {result.first_audio_ms:.0f} ms after "
          f"that; reply {result.audio.size / PROTOCOL_RATE:.1f} s)", file=sys.stderr)
    return 0


class ConverseResult:
    def __init__(self, question: str, answer: str, audio: np.ndarray, transcribe_ms: float, first_audio_ms: float):
        self.question, self.answer, self.audio = question, answer, audio
        self.transcribe_ms, self.first_audio_ms = transcribe_ms, first_audio_ms


async def converse(backend, audio: np.ndarray, image: bytes | None, instructions: str | None) -> ConverseResult:
    from engine.backends.base import ReplyRequest, SpeechChunk, TextDelta, Turn
    from engine.realtime.session_config import DEFAULT_INSTRUCTIONS

    session = backend.open_session()
    try:
        started = time.monotonic()
        screens = (await session.read_screen(image),) if image else ()
        listener = session.listen(ReplyRequest(instructions or DEFAULT_INSTRUCTIONS, ()))
        listener.feed(audio)
        question = await listener.transcript()
        listener.close()
        transcribed = time.monotonic()
        request = ReplyRequest(instructions or DEFAULT_INSTRUCTIONS,
                               (Turn("user", question, images=screens),))
        pieces, texts, first_audio = [], [], None
        async for output in session.reply(request):
            if isinstance(output, SpeechChunk):
                first_audio = first_audio or time.monotonic()
                pieces.append(output.audio)
                texts.append(output.text)
            elif isinstance(output, TextDelta):
                texts.append(output.text)
        reply_audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
        return ConverseResult(question, " ".join(t.strip() for t in texts if t.strip()), reply_audio,
                              (transcribed - started) * 1000, ((first_audio or transcribed) - transcribed) * 1000)
    finally:
        session.close()
