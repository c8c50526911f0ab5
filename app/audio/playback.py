"""The speaker: plays each reply's audio deltas, stops on the spot, and knows exactly what was heard.

A jitter buffer of one response at a time sits between the network thread (`push`) and the
PortAudio callback, which copies from it and nothing more. The stream runs all the time (silence
between replies), so a reply starts without the cost of opening a device and is never clipped by a
stream start.

Accounting: for every block the callback hands over, it notes when the block's first frame will
reach the converter (PortAudio's outputBufferDacTime, on our monotonic clock). `played_ms` counts
only frames whose time has passed, on the response's own 24 kHz timeline (resampling keeps time).
`cancel` cannot take back what is already inside the device's buffer (~10-20 ms); it returns the
total that will have been heard once that plays out, which is the `audio_end_ms` to send.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable

import numpy as np
import soxr

from app.audio import devices
from app.audio.devices import AudioDeviceError, StreamHealth, describe_error, portaudio, portaudio_lock

PROTOCOL_RATE = 24_000
# Playback is what the person hears: the best resampler; its 16 ms hold-back is released by finish().
RESAMPLER_QUALITY = "HQ"
# Replies arrive from a local engine in deltas of 20-500 ms. 60 ms rides out that jitter; a reply
# whose audio is complete (finish) starts at once however short it is.
DEFAULT_PREBUFFER_MS = 60
# PulseAudio's ALSA plugin was seen to drop up to ~2 ms at the start of a stream: play silence first.
STREAM_WARMUP_MS = 20
_HISTORY = 64  # responses remembered for played_ms and refusal after they end
# cancel(UNANNOUNCED): the reply that was asked for and stopped before the app heard its id (the controller
# names it the same way). Its audio may come first, straight from the network: it is refused all the same.
UNANNOUNCED = ""


class _Response:
    """One response's queued audio (at the device rate) and what became of it."""

    def __init__(self, response_id: str, rate: int):
        self.id = response_id
        self.rate = rate
        self.resampler = _resampler(rate)
        self.chunks: collections.deque[np.ndarray] = collections.deque()
        self.head = 0  # frames of chunks[0] already played
        self.queued = 0  # frames waiting
        self.received_s = 0.0  # protocol-rate audio pushed, in seconds
        self.finished = False  # finish() came: no more audio, start without waiting for the prebuffer
        self.dropped = False  # cancelled, replaced or lost: nothing more of it will play
        self.buffering = True  # waiting for the prebuffer (at the start, and after an underrun)
        self.written_s = 0.0  # handed to the device
        self.settled_s = 0.0  # certainly out of the device
        self.segments: collections.deque[tuple[float, float]] = collections.deque()  # (dac time, seconds)
        self.started = False
        self.drained = False

    def append(self, chunk: np.ndarray) -> None:
        if len(chunk):
            self.chunks.append(chunk)
            self.queued += len(chunk)

    def read_into(self, out: np.ndarray, frames: int, prebuffer_s: float) -> int:
        if self.buffering:
            # Counted in audio received, not yet played: the resampler holds back a few ms of it
            # that are as good as queued (they come out with the next push, or at finish).
            if self.received_s - self.written_s < prebuffer_s and not self.finished:
                return 0
            self.buffering = False
        done = 0
        while done < frames and self.chunks:
            chunk = self.chunks[0]
            take = min(frames - done, len(chunk) - self.head)
            out[done : done + take] = chunk[self.head : self.head + take]
            done += take
            self.head += take
            if self.head == len(chunk):
                self.chunks.popleft()
                self.head = 0
        self.queued -= done
        return done

    def played_s(self, now: float) -> float:
        while self.segments and self.segments[0][0] + self.segments[0][1] <= now:
            self.settled_s += self.segments.popleft()[1]
        return self.settled_s + sum(min(length, max(0.0, now - dac)) for dac, length in self.segments)

    def capped_ms(self, seconds: float) -> float:
        return 1000.0 * min(seconds, self.received_s)

    def convert(self, rate: int) -> None:
        """The device's rate changed: bring the queue and the resampler over to `rate`."""
        if self.resampler is not None:
            self.append(self.resampler.resample_chunk(np.zeros(0, np.float32), last=True))
        if self.chunks:
            rest = np.concatenate([self.chunks[0][self.head :], *list(self.chunks)[1:]])
            self.chunks.clear()
            self.head = self.queued = 0
            self.append(soxr.resample(rest, self.rate, rate, quality=RESAMPLER_QUALITY).astype(np.float32))
        self.rate = rate
        self.resampler = None if self.finished else _resampler(rate)


def _resampler(rate: int):
    if rate == PROTOCOL_RATE:
        return None
    return soxr.ResampleStream(PROTOCOL_RATE, rate, 1, dtype="float32", quality=RESAMPLER_QUALITY)


class Speaker:
    def __init__(
        self,
        device: str | int | None = None,
        on_error: Callable[[str], None] | None = None,
        on_started: Callable[[str], None] | None = None,
        on_drained: Callable[[str], None] | None = None,
        on_played: Callable[[np.ndarray, float, int, int, bool], None] | None = None,
        prebuffer_ms: int = DEFAULT_PREBUFFER_MS,
        block_ms: int = 5,
        stall_timeout_s: float = 1.0,
    ):
        """`on_started(response_id)`: the response's first sample is leaving the device now.
        `on_drained(response_id)`: its last sample has left, after finish(), or it can play no further
        (the device was lost). Both are called on the speaker's own thread; `on_error(message)` too, with
        one line for the person.
        `on_played(block, dac_time, rate, frame_index, resync)`: a copy of every block with reply audio
        in it (mono, the device's rate), when its first frame leaves the device, that frame's number in
        the stream (0 at the stream's start), and whether the device ran dry since the last such block
        (it played silence of its own, so frames no longer leave when the stream's sample clock says):
        the echo canceller's reference.
        Called inside the audio callback, so it must only hand the block over."""
        self._device_spec = device
        self._on_error = on_error
        self._on_started = on_started
        self._on_drained = on_drained
        self._on_played = on_played
        self._ran_dry = False
        self.prebuffer_ms = prebuffer_ms
        self._block_ms = block_ms
        self._health = StreamHealth(stall_timeout_s)
        self._lock = threading.Lock()  # held by the callback for a block copy, by others as briefly
        self._push_lock = threading.Lock()  # one resampling at a time, in push order
        self._current: _Response | None = None
        self._holding = False  # the callback plays silence and takes nothing (device change)
        self._warmup_frames = 0  # silence first: a fresh stream can lose its first few ms
        self._frames_out = 0
        self._heard_until = 0.0  # when the last frame handed to the device will have left it
        self._history: collections.OrderedDict[str, _Response] = collections.OrderedDict()
        self._refused: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._notifier: threading.Thread | None = None
        self._stream = None
        self._reopen_wanted = False
        self._lost = False  # no device would open, or it went: replies are refused until one opens
        self._cut_next = False  # the next new reply is the one cancelled as UNANNOUNCED
        self._rate = PROTOCOL_RATE  # the rate queued audio is kept at; the device's once opened
        self._latency = 0.0
        self._device_name = ""
        self.output_delay_ms = 0.0  # latest time from a callback to its first frame leaving the device
        self.underruns = 0  # times a playing reply ran dry before its end (audio came too late)
        self.xruns = 0  # times the device ran dry because this process was late (a loaded machine)
        self.last_error = ""

    # --- public: the device ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._stream is not None

    @property
    def device_name(self) -> str:
        return self._device_name

    @property
    def rate(self) -> int:
        return self._rate if self._stream is not None else 0

    def start(self) -> bool:
        """Open the device; False (and on_error) when that is impossible. Audio pushed before plays
        once the stream is up."""
        with portaudio_lock:
            if self._stream is not None:
                return True
            if not self._open():
                return False
            devices.register_stream(self)
        if self._notifier is None or not self._notifier.is_alive():
            self._notifier = threading.Thread(target=self._notify, name="speaker-events", daemon=True)
            self._notifier.start()
        return True

    def stop(self) -> None:
        """Close the device; whatever was queued is dropped."""
        with portaudio_lock:
            devices.unregister_stream(self)
            self._close(drain=False)
        self.flush()
        notifier, self._notifier = self._notifier, None
        if notifier is not None and notifier is not threading.current_thread():
            self._events.put(None)
            notifier.join(timeout=5.0)

    def switch_device(self, device: str | int | None) -> bool:
        """Play on another device from now on; a reply in progress goes on there."""
        self._device_spec = device
        if self._stream is None:
            return True
        with portaudio_lock:
            self._close_for_refresh()
            if self._open():
                return True
            devices.unregister_stream(self)
            return False

    # --- public: replies ------------------------------------------------------------------------

    def push(self, response_id: str, pcm: np.ndarray) -> bool:
        """Queue float32 mono 24 kHz audio of `response_id` (any thread). A new id replaces the reply
        that was playing; audio of a cancelled, replaced or finished id is refused: False."""
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        with self._push_lock:
            with self._lock:
                response = self._response_for_push(response_id)
                if response is None:
                    return False
                resampler = response.resampler
            chunk = pcm if resampler is None else resampler.resample_chunk(pcm)
            with self._lock:
                if response.dropped or response.resampler is not resampler:
                    return False  # cancelled, or the device changed rate, while we resampled
                response.append(chunk)
                response.received_s += len(pcm) / PROTOCOL_RATE
        return True

    def finish(self, response_id: str) -> None:
        """All of the response's audio has been pushed: play it to the end without waiting to fill the
        prebuffer, then report on_drained."""
        with self._push_lock, self._lock:
            response = self._current
            if response is None or response.id != response_id or response.finished:
                return
            if response.resampler is not None:
                response.append(response.resampler.resample_chunk(np.zeros(0, np.float32), last=True))
                response.resampler = None
            response.finished = True
            self._refuse(response_id)  # anything later of it is a stray
            if response.queued == 0 and not response.started:
                response.drained = True  # nothing to play at all
                self._current = None

    def cancel(self, response_id: str) -> float:
        """Silence `response_id` now (the next callback plays none of it) and refuse its later audio.
        Returns the ms of it the person will have heard: what already left the device plus what is
        inside the device's buffer and cannot be taken back. UNANNOUNCED: the reply playing now, which
        can only be that one, or else the next new one."""
        with self._lock:
            if response_id == UNANNOUNCED:
                if self._current is None:
                    self._cut_next = True
                    return 0.0
                response_id = self._current.id
            self._cut_next = False  # a reply is named: the one awaited is known now
            self._refuse(response_id)
            response = self._history.get(response_id)
            if response is None:
                return 0.0
            self._drop(response)
            return response.capped_ms(response.written_s)

    def flush(self) -> tuple[str, float] | None:
        """Silence whatever reply is queued or playing (as cancel); its id and heard ms, if any."""
        with self._lock:
            response = self._current
        if response is None:
            return None
        return response.id, self.cancel(response.id)

    def played_ms(self, response_id: str) -> float:
        """Ms of the response (its own 24 kHz timeline) that have left the device by now."""
        with self._lock:
            response = self._history.get(response_id)
            if response is None:
                return 0.0
            return response.capped_ms(response.played_s(time.monotonic()))

    def heard_ms(self, response_id: str) -> float:
        """What the person will have heard of the response in the end, if it stops being fed now: for
        a cancelled or replaced one that is final at once; for a playing one it is played_ms."""
        with self._lock:
            response = self._history.get(response_id)
            if response is None:
                return 0.0
            if response.dropped:
                return response.capped_ms(response.written_s)
            return response.capped_ms(response.played_s(time.monotonic()))

    @property
    def playing(self) -> str | None:
        """The response whose audio is queued or playing, if any."""
        response = self._current
        return None if response is None else response.id

    def buffered_ms(self) -> float:
        response = self._current
        return 0.0 if response is None else 1000.0 * response.queued / response.rate

    # --- replies: bookkeeping (under self._lock) ------------------------------------------------

    def _response_for_push(self, response_id: str) -> _Response | None:
        if response_id in self._refused or self._lost:
            return None
        current = self._current
        if current is not None and current.id == response_id:
            return current
        if self._cut_next:  # the reply stopped before it was announced
            self._cut_next = False
            self._refuse(response_id)
            return None
        if current is not None:  # a new reply replaces the old one, whose stray audio stays out
            self._refuse(current.id)
            self._drop(current)
        response = _Response(response_id, self._rate)
        self._current = response
        self._history[response_id] = response
        while len(self._history) > _HISTORY:
            self._history.popitem(last=False)
        return response

    def _drop(self, response: _Response) -> None:
        response.dropped = True
        response.chunks.clear()
        response.queued = 0
        if self._current is response:
            self._current = None

    def _refuse(self, response_id: str) -> None:
        self._refused[response_id] = None
        while len(self._refused) > _HISTORY:
            self._refused.popitem(last=False)

    # --- the stream -----------------------------------------------------------------------------

    def _open(self) -> bool:
        pa = portaudio()
        try:
            device = self._find_device()
            if self._stream is not None:  # never drop an open stream: PortAudio would call a freed callback
                self._close(drain=False)
            channels = devices.stream_channels(device, "output")
            rate = devices.preferred_rate(device, "output", channels)
            stream = pa.OutputStream(
                device=device.index, samplerate=rate, channels=channels, dtype="float32", latency="low",
                blocksize=max(1, rate * self._block_ms // 1000), callback=self._fill,
                finished_callback=self._health.on_finished,
            )
        except AudioDeviceError as error:
            self._report(str(error))
            return False
        except Exception as error:  # PortAudioError and friends: one line for the person
            self._report(f"Could not open {self._label()}: {describe_error(error)}.")
            return False
        self._use_rate(rate)
        self._latency = float(stream.latency)
        self._warmup_frames = rate * STREAM_WARMUP_MS // 1000
        self._frames_out = 0  # handed to this stream so far: the echo reference's sample clock
        self._health.opened()
        try:
            stream.start()
        except Exception as error:
            self._health.closing()
            devices.retire(stream)
            self._report(f"Could not start {self._label()}: {describe_error(error)}.")
            return False
        self._stream = stream
        self._device_name = device.name
        self.last_error = ""
        self._lost = False
        return True

    def _use_rate(self, rate: int) -> None:
        with self._push_lock, self._lock:
            if rate != self._rate and self._current is not None:
                self._current.convert(rate)
            self._rate = rate

    def _find_device(self) -> devices.AudioDevice:
        try:
            return devices.find_device("output", self._device_spec)
        except AudioDeviceError:
            if self._device_spec is None:
                raise
            devices.refresh()  # it may have been plugged in since PortAudio last looked
            return devices.find_device("output", self._device_spec)

    def _hold_and_drain(self) -> None:
        """Stop taking audio from the queue and wait until what the device holds has been heard:
        closing a stream can drop its last buffer, and the accounting would count it as played."""
        self._holding = True
        # The margin covers the error of the device's own timing estimate (~1 ms seen on PulseAudio).
        deadline = min(self._heard_until + 0.02, time.monotonic() + 0.5)
        while time.monotonic() < deadline:
            time.sleep(0.002)

    def _close(self, drain: bool) -> None:
        """drain: let what the device holds play out (keeps the accounting exact across a reopen)."""
        stream, self._stream = self._stream, None
        self._health.closing()
        if stream is not None:
            devices.retire(stream, drain)

    def _close_for_refresh(self) -> None:
        # Only a stream open now is reopened: refresh() may run from inside our own _open().
        self._reopen_wanted = self._stream is not None
        self._hold_and_drain()
        self._close(drain=True)
        self._holding = False

    def _reopen_after_refresh(self) -> None:
        if self._reopen_wanted and not self._open():
            devices.unregister_stream(self)

    def _fill(self, outdata, frames, time_info, status) -> None:
        # PortAudio's thread: copy out of the queue, note when this block will be heard, nothing else.
        now = time.monotonic()
        self._health.last_callback = now
        if status and status.output_underflow:
            self.xruns += 1
            self._ran_dry = True  # told with the next block of reply audio
        delay = time_info.outputBufferDacTime - time_info.currentTime
        if not 0.0 <= delay < 1.0 or time_info.currentTime == 0.0:
            delay = self._latency  # the host gives no timing: trust the stream's nominal latency
        dac = now + delay
        self.output_delay_ms = delay * 1000.0
        out = outdata[:, 0]
        done = 0
        with self._lock:
            response = self._current
            if self._warmup_frames > 0:
                self._warmup_frames -= frames
            elif response is not None and not self._holding:
                done = response.read_into(out, frames, self.prebuffer_ms / 1000.0)
                self._account(response, done, frames, dac, now)
        if done < frames:
            out[done:] = 0.0
        if done and self._on_played is not None:
            self._on_played(out.copy(), dac, self._rate, self._frames_out, self._ran_dry)
            self._ran_dry = False
        self._frames_out += frames
        if outdata.shape[1] > 1:
            outdata[:, 1:] = outdata[:, :1]

    def _account(self, response: _Response, done: int, frames: int, dac: float, now: float) -> None:
        if done:
            length = done / response.rate
            response.played_s(now)  # retire finished segments so the list stays a few entries long
            response.segments.append((dac, length))
            response.written_s += length
            self._heard_until = dac + length
            if not response.started:
                response.started = True
                self._events.put((dac, "started", response.id))
        if response.queued == 0 and not response.buffering:
            if response.finished:
                response.drained = True
                self._current = None
                self._events.put((dac + done / response.rate, "drained", response.id))
            elif done < frames:
                response.buffering = True  # ran dry mid-reply: silence until the prebuffer refills
                self.underruns += 1

    # --- events and health, on the speaker's own thread -----------------------------------------

    def _notify(self) -> None:
        while True:
            try:
                event = self._events.get(timeout=0.1)
            except queue.Empty:
                event = ()
            if event is None:
                return
            if event:
                due, kind, response_id = event
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)  # report the moment the sample leaves the device, not before
                handler = self._on_started if kind == "started" else self._on_drained
                if handler is not None:
                    handler(response_id)
            problem = self._health.problem()
            if problem is not None:
                self._fail(problem)

    def _fail(self, problem: str) -> None:
        with portaudio_lock:
            if self._health.problem() is None:
                return  # stopped or reopened meanwhile
            name = self._label()
            devices.unregister_stream(self)
            self._close(drain=False)
        if problem == "lost":
            self._report(f"{name[0].upper()}{name[1:]} was disconnected or stopped working.")
        else:
            self._report(f"{name[0].upper()}{name[1:]} stopped playing.")

    def _label(self) -> str:
        spec = self._device_spec
        return "the speaker" if spec is None else f"the speaker {self._device_name or spec!r}"

    def _report(self, message: str) -> None:
        """No device to play on: it would not open, or it went. The reply playing ends here (its tail would
        make no sense after the gap), and replies are refused until a device opens (the person reads them),
        so that none of them plays when the device is back, long after its moment."""
        with self._lock:
            self._lost = True
            response = self._current
            if response is not None:
                self._refuse(response.id)
                self._drop(response)
        if response is not None:  # it will not drain: it is over all the same
            self._events.put((time.monotonic(), "drained", response.id))
        self.last_error = message
        if self._on_error is not None:
            self._on_error(message)
