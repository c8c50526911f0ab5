"""Barge-ins nobody made: the local detector stopped a reply, and then the engine, listening to the same
microphone from the second before the barge-in on, heard no speech at all.

EchoMonitor (echo_canceller.py) catches an echo the canceller fails to remove (ERLE under 6 dB). This
catches the echo it removes well but not well enough for the detector's keenest ear: on harness paths
whose echo came apart from the reference, ERLE stayed at 31-33 dB and the detector stopped 41 and 42 of
50 replies with nobody talking (AEC runs 23 and 25, README). An echo loud enough for the engine too
comes back as a turn made of the reply's own words (the controller drops it: app/own_voice.py), and
counts the same. After IN_A_ROW of them in a row, the app falls back to half-duplex, as it does for
EchoMonitor; a turn of the person's own words breaks the row.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# The engine hears a person's interruption within this of the local barge-in: the router sends it the
# held-back second first, so its VAD has the onset at once, and starts a turn after ~0.3 s of speech.
CONFIRM_S = 2.0
IN_A_ROW = 2  # one can be a cough or a word cut short; two in a row are the echo


class SelfInterruptions:
    """Fed on the GUI thread: each local barge-in, each time the engine hears speech, each spoken turn
    it transcribes (the person's, or the reply's own voice), and `expire` CONFIRM_S after a barge-in (a
    timer, armed again for what `expire` says is left)."""

    def __init__(self, on_failing: Callable[[], None], clock: Callable[[], float] = time.monotonic):
        self._on_failing = on_failing
        self._clock = clock
        self._waiting_since: float | None = None  # an unconfirmed barge-in
        self._counted_unheard = False  # the last barge-in was counted as one the engine heard nobody after
        self.in_a_row = 0  # barge-ins the engine heard nobody after, and turns of its own voice, in a row

    def barge_in(self) -> None:
        if self._waiting_since is None:
            self._waiting_since = self._clock()
            self._counted_unheard = False

    def speech_heard(self) -> None:
        """The engine heard speech after the barge-in: whose it was, the turn's words will tell
        (`person_heard`, `own_voice_heard`)."""
        self._waiting_since = None

    def person_heard(self) -> None:
        self.in_a_row = 0
        self._counted_unheard = False

    def own_voice_heard(self) -> None:
        if self._counted_unheard:
            # The engine heard the echo after CONFIRM_S (a slow machine): that barge-in is counted already.
            self._counted_unheard = False
            return
        self._count()

    def expire(self) -> float | None:
        """A barge-in that waited CONFIRM_S for speech in vain was the echo's. Called early (Qt's coarse
        timers fire up to 5% early: 1.96 s for 2.05 s, measured), it judges nothing and returns the
        seconds still to wait."""
        if self._waiting_since is None:
            return None
        left = CONFIRM_S - (self._clock() - self._waiting_since)
        if left > 0:
            return left
        self._waiting_since = None
        self._counted_unheard = True
        self._count()
        return None

    def _count(self) -> None:
        self.in_a_row += 1
        if self.in_a_row >= IN_A_ROW:
            self.in_a_row = 0
            self._on_failing()

    def forget(self) -> None:
        """Nothing counts from before: a new echo path (another device), or hands-free turned off."""
        self._waiting_since = None
        self._counted_unheard = False
        self.in_a_row = 0
