"""The microphone: PortAudio input at the device's rate, delivered as float32 mono 24 kHz chunks.

The PortAudio callback only copies the block into a queue with its capture time; a worker thread
downmixes, resamples (streaming, so chunk edges are seamless and lengths exact), keeps the level
meter and calls `on_audio(chunk, capture_time)`. The same worker notices a device that was
unplugged or went quiet and reports it once through `on_error` as one line; nothing is raised.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import soxr

from app.audio import devices
from app.audio.devices import AudioDeviceError, StreamHealth, describe_error, portaudio, portaudio_lock

PROTOCOL_RATE = 24_000
# For rates other than 48 kHz: soxr LQ holds back ~10 ms (HQ ~16 ms) and its passband still
# reaches ~9.6 kHz, beyond what speech recognition (16 kHz models) and the VAD use.
RESAMPLER_QUALITY = "LQ"
# The meter shows -60..0 dBFS as 0..1: quiet rooms sit near 0, normal speech around 0.5-0.8.
METER_FLOOR_DB = -60.0
METER_RELEASE_S = 0.05  # rises at once, falls ~90 dB/s: smooth between syllables, quick to show silence


class _HalveRate:
    """48 -> 24 kHz, the usual case, with one FIR pass per block. soxr's streams deliver in bursts
    (LQ: 470 samples every other 10 ms block, on top of 10 ms held back); this filter releases every
    block at once with 0.8 ms of group delay. Half-band, Kaiser-windowed: flat to 10.5 kHz, -6 dB at
    12 kHz, below -75 dB from 13.5 kHz. Exact length: half of what goes in."""

    TAPS = 81
    delay_s = (TAPS - 1) / 2 / 48_000

    def __init__(self):
        n = np.arange(self.TAPS) - (self.TAPS - 1) / 2
        taps = 0.5 * np.sinc(0.5 * n) * np.kaiser(self.TAPS, 7.9)
        self._taps = (taps / taps.sum()).astype(np.float32)
        self._history = np.zeros(self.TAPS - 1, np.float32)
        self._consumed = 0

    def resample_chunk(self, block: np.ndarray) -> np.ndarray:
        padded = np.concatenate((self._history, block))
        filtered = np.convolve(padded, self._taps, mode="valid")  # one value per input sample
        out = filtered[self._consumed % 2 :: 2]  # keep the even samples of the whole stream
        self._history = padded[len(padded) - (self.TAPS - 1) :]
        self._consumed += len(block)
        return out.astype(np.float32, copy=False)


class _SoxrStream:
    delay_s = 0.0  # soxr aligns its output with the input's timeline itself

    def __init__(self, rate: int):
        self._stream = soxr.ResampleStream(rate, PROTOCOL_RATE, 1, dtype="float32", quality=RESAMPLER_QUALITY)

    def resample_chunk(self, block: np.ndarray) -> np.ndarray:
        return self._stream.resample_chunk(block)


def protocol_rate_resampler(rate: int):
    """Device rate → 24 kHz, streaming; None when no conversion is needed."""
    if rate == PROTOCOL_RATE:
        return None
    return _HalveRate() if rate == 2 * PROTOCOL_RATE else _SoxrStream(rate)


@dataclass(frozen=True)
class _StreamOpened:
    """Queued in order with the blocks: what follows comes from a new stream (reset the resampler)."""

    rate: int


_STOP = object()


class Microphone:
    def __init__(
        self,
        device: str | int | None = None,
        on_audio: Callable[[np.ndarray, float], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        block_ms: int = 10,
        stall_timeout_s: float = 1.0,
    ):
        """`device`: None for the system default, or a device name (see devices.find_device).
        `on_audio(chunk, capture_time)`: float32 mono 24 kHz, and the time.monotonic() at which the
        chunk's first sample was captured; called on the capture worker thread.
        `on_error(message)`: one line for the person, e.g. the device was unplugged."""
        self._device_spec = device
        self._on_audio = on_audio
        self._on_error = on_error
        self._block_ms = block_ms
        self._health = StreamHealth(stall_timeout_s)
        self._blocks: queue.SimpleQueue = queue.SimpleQueue()
        self._stream = None
        self._reopen_wanted = False
        self._worker: threading.Thread | None = None
        self._device_name = ""
        self._rate = 0
        self._latency = 0.0
        self._power = 0.0  # mean square, with the meter's release applied
        self.overflows = 0  # blocks the device dropped because we read too late
        self.last_error = ""

    # --- public ---------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._stream is not None

    @property
    def device_name(self) -> str:
        return self._device_name

    @property
    def rate(self) -> int:
        """The device-side rate of the open stream (0 when closed)."""
        return self._rate

    @property
    def level(self) -> float:
        """Recent loudness for a meter, 0..1 (see METER_FLOOR_DB)."""
        if self._power <= 0.0:
            return 0.0
        db = 10.0 * math.log10(self._power)
        return min(1.0, max(0.0, 1.0 - db / METER_FLOOR_DB))

    def start(self) -> bool:
        """Open the device and start delivering audio; False (and on_error) when that is impossible."""
        with portaudio_lock:
            if self._stream is not None:
                return True
            if not self._open():
                return False
            devices.register_stream(self)
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="microphone", daemon=True)
            self._worker.start()
        return True

    def stop(self) -> None:
        with portaudio_lock:
            devices.unregister_stream(self)
            self._close()
        worker, self._worker = self._worker, None
        if worker is not None and worker is not threading.current_thread():
            self._blocks.put(_STOP)
            worker.join(timeout=5.0)
        self._power = 0.0

    def switch_device(self, device: str | int | None) -> bool:
        """Use another device from now on (restarting the stream if one was running)."""
        self._device_spec = device
        if self._stream is None:
            return True
        with portaudio_lock:
            self._close()
            if self._open():
                return True
            devices.unregister_stream(self)
            return False

    # --- the stream -----------------------------------------------------------------------------

    def _open(self) -> bool:
        pa = portaudio()
        try:
            device = self._find_device()
            if self._stream is not None:  # never drop an open stream: PortAudio would call a freed callback
                self._close()
            channels = devices.stream_channels(device, "input")
            rate = devices.preferred_rate(device, "input", channels)
            stream = pa.InputStream(
                device=device.index, samplerate=rate, channels=channels, dtype="float32", latency="low",
                blocksize=max(1, rate * self._block_ms // 1000), callback=self._on_block,
                finished_callback=self._health.on_finished,
            )
            self._blocks.put(_StreamOpened(rate))
            self._health.opened()
            try:
                stream.start()
            except Exception:
                self._health.closing()
                devices.retire(stream)
                raise
        except AudioDeviceError as error:
            self._report(str(error))
            return False
        except Exception as error:  # PortAudioError and friends: one line for the person
            self._report(f"Could not open {self._label()}: {describe_error(error)}.")
            return False
        self._stream, self._rate, self._latency = stream, rate, float(stream.latency)
        self._device_name = device.name
        self.last_error = ""
        return True

    def _find_device(self) -> devices.AudioDevice:
        try:
            return devices.find_device("input", self._device_spec)
        except AudioDeviceError:
            if self._device_spec is None:
                raise
            devices.refresh()  # it may have been plugged in since PortAudio last looked
            return devices.find_device("input", self._device_spec)

    def _close(self) -> None:
        stream, self._stream = self._stream, None
        self._rate = 0
        self._health.closing()
        if stream is not None:
            devices.retire(stream)

    def _close_for_refresh(self) -> None:
        # Only a stream open now is reopened: refresh() may run from inside our own _open().
        self._reopen_wanted = self._stream is not None
        self._close()

    def _reopen_after_refresh(self) -> None:
        if self._reopen_wanted and not self._open():
            devices.unregister_stream(self)

    def _on_block(self, indata, frames, time_info, status) -> None:
        # PortAudio's thread: copy and timestamp only. The capture time is when the first frame of
        # this block reached the converter, on our monotonic clock.
        now = time.monotonic()
        self._health.last_callback = now
        age = time_info.currentTime - time_info.inputBufferAdcTime
        if not 0.0 <= age < 1.0:
            age = self._latency
        self._blocks.put((indata.copy(), now - age, status.input_overflow))

    # --- the worker -----------------------------------------------------------------------------

    def _work(self) -> None:
        resampler = None
        rate = 0
        delay = 0.0
        consumed = produced = 0  # device-rate samples in, protocol-rate samples out, this stream
        release = 1.0
        while True:
            try:
                item = self._blocks.get(timeout=0.1)
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            if isinstance(item, _StreamOpened):
                rate = item.rate
                resampler = protocol_rate_resampler(rate)
                delay = 0.0 if resampler is None else resampler.delay_s
                consumed = produced = 0
                release = math.exp(-self._block_ms / 1000 / METER_RELEASE_S)
            elif item is not None and rate:
                block, adc_time, overflowed = item
                self.overflows += bool(overflowed)
                mono = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)
                chunk = mono if resampler is None else resampler.resample_chunk(mono)
                # Output sample j sits at j / 24000 s on the stream's timeline (less the filter's
                # delay), input sample i at i / rate; this block's first one was captured at adc_time.
                capture_time = adc_time + produced / PROTOCOL_RATE - delay - consumed / rate
                consumed += len(mono)
                produced += len(chunk)
                power = float(np.dot(mono, mono)) / max(1, len(mono))
                self._power = max(power, self._power * release)
                if len(chunk) and self._on_audio is not None:
                    self._on_audio(chunk, capture_time)
            problem = self._health.problem()
            if problem is not None:
                self._fail(problem)

    def _fail(self, problem: str) -> None:
        with portaudio_lock:
            if self._health.problem() is None:
                return  # stopped or reopened meanwhile
            name = self._label()
            devices.unregister_stream(self)
            self._close()
        self._power = 0.0
        if problem == "lost":
            self._report(f"{name[0].upper()}{name[1:]} was disconnected or stopped working.")
        else:
            self._report(f"{name[0].upper()}{name[1:]} stopped sending audio.")

    def _label(self) -> str:
        spec = self._device_spec
        return "the microphone" if spec is None else f"the microphone {self._device_name or spec!r}"

    def _report(self, message: str) -> None:
        self.last_error = message
        if self._on_error is not None:
            self._on_error(message)
