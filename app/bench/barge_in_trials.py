"""Barge-in: the person talks over a reply; how long until the speaker is silent.

A long reply is asked for by typing; once it plays, speech goes into the virtual microphone at a
different point of the reply each time. Onset is the first speech sample the microphone heard; silence
is the last sample of the reply the speaker played after that. Both are arrival times at the virtual
devices, so the figure holds everything: capture, the app's speech detector, the cut, and what was
already in the output device's buffer.

Run in push-to-talk mode, where only the app's own detector can interrupt: hands-free, each
interruption would also become a spoken turn with a reply of its own for the next trial to cut.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from app.bench.event_loop import run_for, run_until
from app.bench.sound_edges import last_sound, speech_start
from app.bench.spoken_lines import RATE, SpokenLine
from app.state import AppState

REPLY_START_TIMEOUT_S = 60.0
# A conversation full of interrupted replies teaches a small model to answer in a word: the person's
# own instructions (a setting) ask for long answers, as the engine benchmark's do.
AT_LENGTH = "Answer at length: at least eight full sentences."
# Every trial starts a new conversation and asks something new: a small model shown its own cut-short
# answers repeats them word for word ("I'm sorry," twenty times over in one run), and a two-word reply
# is over before anyone can talk over it.
STORY_SUBJECTS = (
    "a lighthouse keeper who befriends a lost whale", "a robot who plants a garden on the moon",
    "a clockmaker who can pause time for one minute a day", "a fox who runs a tiny bookshop",
    "two astronauts who find a piano on Mars", "a girl who teaches her grandmother to surf",
    "a city where it rains lemonade every Tuesday", "a shy dragon who opens a bakery",
    "a detective cat solving the case of the missing socks", "a sailor who maps the stars",
    "a violin that plays only at midnight", "a beekeeper who talks to the queen bee",
    "a train that travels to yesterday", "an old tree that remembers every child who climbed it",
    "a chef who cooks only with snow", "a mountain village that hides from maps",
    "a painter whose portraits whisper", "a boy who collects echoes in jars",
    "a penguin who wants to fly south", "a library that rearranges itself every night",
)
DETECTION_GRACE_S = 2.0  # after the speech ended: a detector that has not fired by then never will
SETTLE_S = 0.5  # recording goes on after the cut, so reply audio that played on would be caught


@dataclass(frozen=True)
class BargeInTiming:
    voice: str
    listened_s: float  # how long the reply had played when the speech was sent
    fired: bool  # the app's detector interrupted the reply
    reply_playing: bool  # the reply was still playing when the speech reached the microphone
    onset_to_silence_ms: float | None  # None unless fired and the reply was still playing
    onset_to_detection_ms: float | None  # until the microphone worker silenced the speaker


def barge_in(pulse, confide, probe, request: str, speech: SpokenLine, listen_s: float) -> BargeInTiming:
    controller = confide.controller
    controller.new_conversation()
    with pulse.record_mic_feed() as mic, pulse.record_speaker() as speaker:
        asked = time.monotonic()
        controller.submit_text(request)
        run_until(lambda: controller.state is AppState.SPEAKING or (
            probe.reached_since(AppState.THINKING, asked) and controller.state is AppState.IDLE),
            REPLY_START_TIMEOUT_S, "the long reply to play")
        run_for(listen_s)
        was_playing = controller.state is AppState.SPEAKING
        sent = time.monotonic()
        feed = pulse.feed_mic(speech.audio, RATE)
        run_until(lambda: probe.barge_ins_since(sent), len(speech.audio) / RATE + DETECTION_GRACE_S)
        fired = probe.barge_ins_since(sent)
        if not fired:
            controller.stop_speaking()  # the next trial starts from silence
        feed.wait(10)
        run_until(lambda: controller.state is not AppState.SPEAKING, 5)
        run_for(SETTLE_S)
    onset = speech_start(mic)
    last = last_sound(speaker, after=onset) if onset is not None else None
    playing = was_playing and last is not None
    measured = bool(fired) and playing
    return BargeInTiming(
        voice=speech.voice, listened_s=listen_s, fired=bool(fired), reply_playing=playing,
        onset_to_silence_ms=round((last - onset) * 1000, 1) if measured else None,
        onset_to_detection_ms=round((fired[0].fired - onset) * 1000, 1) if fired and onset is not None else None)


def barge_ins(pulse, confide, probe, requests: list[str], speeches: list[SpokenLine], trials: int,
              pause_s: float = 0.3) -> list[BargeInTiming]:
    """Until `trials` replies were interrupted while playing (a reply may end before the speech comes:
    it is retried, up to twice as many attempts)."""
    confide.controller.set_hands_free(False)
    talk = confide.controller.settings
    talk.instructions, usual = AT_LENGTH, talk.instructions
    confide.controller.apply_settings()
    run_until(lambda: confide.controller.state is AppState.IDLE, 30, "push-to-talk")
    timings: list[BargeInTiming] = []
    index = 0
    while sum(t.reply_playing for t in timings) < trials and index < 2 * trials:
        listen_s = 0.4 + 0.3 * (index % 5)  # interrupt early and late in the reply
        request = (f"Tell me a long story about {STORY_SUBJECTS[index % len(STORY_SUBJECTS)]}."
                   if index < len(STORY_SUBJECTS) else requests[index % len(requests)])
        timings.append(barge_in(pulse, confide, probe, request,
                                speeches[index % len(speeches)], listen_s))
        run_until(lambda: confide.controller.state is AppState.IDLE, 30)
        run_for(pause_s)
        index += 1
    talk.instructions = usual
    confide.controller.apply_settings()
    return timings
