"""The machine's audio devices as PortAudio sees them, and noticing when that set changes.

PortAudio lists devices once, when it is initialised: a device plugged in later only appears after
a re-initialisation, and re-initialising closes every open stream. So `refresh()` first closes the
streams of this package (Microphone, Speaker: they register here), re-initialises, and reopens them
on their devices by name (indices shift). `DeviceWatcher` re-initialises only when a cheap signature
of the system's device set changes, never on a timer, so a running microphone is not interrupted
every few seconds.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

log = logging.getLogger(__name__)

try:
    import sounddevice as sd
except OSError as error:  # the Python package is there, the PortAudio library is not
    sd = None
    _IMPORT_ERROR = f"The audio library PortAudio is missing ({error}); install libportaudio2."
else:
    _IMPORT_ERROR = ""

Direction = Literal["input", "output"]


class AudioDeviceError(RuntimeError):
    """A device problem the person can act on; the message is one line, fit for a notification."""


@dataclass(frozen=True)
class AudioDevice:
    index: int
    name: str
    host_api: str
    input_channels: int
    output_channels: int
    default_rate: float
    is_default_input: bool = False
    is_default_output: bool = False

    def channels(self, direction: Direction) -> int:
        return self.input_channels if direction == "input" else self.output_channels

    def key(self) -> tuple:
        """What identifies the device across re-initialisations (its index may change)."""
        return (self.name, self.host_api, self.input_channels, self.output_channels)


def portaudio():
    """The sounddevice module, or a clear error when PortAudio itself is not installed."""
    if sd is None:
        raise AudioDeviceError(_IMPORT_ERROR)
    return sd


# Serialises PortAudio's global state: opening and closing streams, and re-initialising.
portaudio_lock = threading.RLock()


class _ReopensOnRefresh(Protocol):
    def _close_for_refresh(self) -> None: ...
    def _reopen_after_refresh(self) -> None: ...


_open_streams: weakref.WeakSet = weakref.WeakSet()


def register_stream(owner: _ReopensOnRefresh) -> None:
    """`owner` has a PortAudio stream open; refresh() must close and reopen it around re-initialising."""
    _open_streams.add(owner)


def unregister_stream(owner: _ReopensOnRefresh) -> None:
    _open_streams.discard(owner)


_unclosable: list = []


def retire(stream, drain: bool = False) -> None:
    """Stop and close a PortAudio stream, whatever state its device is in. A stream that will not
    close stays referenced for good: dropping it would free the callback PortAudio may still call."""
    try:
        if drain:
            stream.stop()
        else:
            stream.abort()
    except Exception:  # a dead device may refuse to stop; closing is what matters
        pass
    try:
        stream.close()
    except Exception:
        _unclosable.append(stream)


def list_devices() -> list[AudioDevice]:
    """Every device PortAudio knows about, with the system defaults marked."""
    pa = portaudio()
    with portaudio_lock:
        raw = pa.query_devices()
        apis = pa.query_hostapis()
        default_in, default_out = _system_defaults(pa)
    devices = []
    for info in raw:
        devices.append(
            AudioDevice(
                index=info["index"],
                name=info["name"],
                host_api=apis[info["hostapi"]]["name"],
                input_channels=info["max_input_channels"],
                output_channels=info["max_output_channels"],
                default_rate=float(info["default_samplerate"]),
                is_default_input=info["index"] == default_in,
                is_default_output=info["index"] == default_out,
            )
        )
    return devices


def input_devices() -> list[AudioDevice]:
    return [d for d in list_devices() if d.input_channels > 0]


def output_devices() -> list[AudioDevice]:
    return [d for d in list_devices() if d.output_channels > 0]


def find_device(direction: Direction, device: str | int | None = None) -> AudioDevice:
    """The device to open: None is the system default, a str a device name (exact, else a unique part
    of one, case-insensitive), an int a PortAudio index (valid until the next refresh: prefer names).
    Raises AudioDeviceError with a clear message."""
    noun = "microphone" if direction == "input" else "speaker"
    candidates = [d for d in list_devices() if d.channels(direction) > 0]
    if not candidates:
        raise AudioDeviceError(f"No {noun} found: connect one, or check that the sound system is running.")
    if device is None:
        for d in candidates:
            if d.is_default_input if direction == "input" else d.is_default_output:
                return d
        return candidates[0]  # the host reports no default: any device beats none
    if isinstance(device, int):
        for d in candidates:
            if d.index == device:
                return d
    else:
        exact = [d for d in candidates if d.name == device]
        if exact:
            return exact[0]
        partial = [d for d in candidates if device.lower() in d.name.lower()]
        if len(partial) == 1:
            return partial[0]
    names = ", ".join(repr(d.name) for d in candidates)
    raise AudioDeviceError(f"The {noun} {device!r} is not connected (available: {names}).")


def refresh() -> list[AudioDevice]:
    """Re-initialise PortAudio so devices plugged in or removed since are seen; reopens our streams."""
    pa = portaudio()
    with portaudio_lock:
        owners = list(_open_streams)
        for owner in owners:
            owner._close_for_refresh()
        pa._terminate()
        pa._initialize()
        for owner in owners:
            owner._reopen_after_refresh()
    return list_devices()


def preferred_rate(device: AudioDevice, direction: Direction, channels: int) -> int:
    """48 kHz when the device takes it (an integer ratio to the protocol's 24 kHz, and what nearly all
    hardware and sound servers run at), else the device's own default rate."""
    pa = portaudio()
    check = pa.check_input_settings if direction == "input" else pa.check_output_settings
    try:
        with portaudio_lock:
            check(device=device.index, samplerate=48_000, channels=channels, dtype="float32")
        return 48_000
    except Exception:  # PortAudioError or ValueError: the device refuses 48 kHz
        return int(device.default_rate)


def stream_channels(device: AudioDevice, direction: Direction) -> int:
    """Mono when the device offers it (sound servers mix for us); stereo hardware gets two channels."""
    return 1 if device.channels(direction) == 1 or _accepts_mono(device, direction) else 2


def _accepts_mono(device: AudioDevice, direction: Direction) -> bool:
    pa = portaudio()
    check = pa.check_input_settings if direction == "input" else pa.check_output_settings
    try:
        with portaudio_lock:
            check(device=device.index, channels=1, dtype="float32", samplerate=device.default_rate)
        return True
    except Exception:
        return False


def describe_error(error: BaseException) -> str:
    """One line of an exception's text (PortAudio's can carry several), without a trailing full stop."""
    text = str(error).strip().split("\n")[0].rstrip(".")
    return text or type(error).__name__


def _system_defaults(pa) -> tuple[int, int]:
    try:
        default_in = pa.query_devices(kind="input")["index"]
    except Exception:  # PortAudioError, or ValueError when the host reports none
        default_in = -1
    try:
        default_out = pa.query_devices(kind="output")["index"]
    except Exception:
        default_out = -1
    return default_in, default_out


class StreamHealth:
    """Tells a running stream from a lost one: PortAudio ended it (a device error: finished without a
    stop of ours) or callbacks stopped coming. The callback only stamps a time; the owner's worker
    thread asks `problem()`."""

    def __init__(self, stall_timeout_s: float = 1.0, startup_grace_s: float = 3.0):
        self.stall_timeout_s = stall_timeout_s
        self.startup_grace_s = startup_grace_s  # a device may take a while to deliver its first block
        self.last_callback = 0.0
        self._opened_at = 0.0
        self._expected = False
        self._ended = False

    def opened(self) -> None:
        self._opened_at = self.last_callback = time.monotonic()
        self._ended = False
        self._expected = True

    def closing(self) -> None:
        """Our own stop: the stream ending now is no failure."""
        self._expected = False

    def on_finished(self) -> None:  # PortAudio's finished_callback
        self._ended = True

    def problem(self) -> str | None:
        if not self._expected:
            return None
        if self._ended:
            return "lost"
        if self.last_callback > self._opened_at:  # delivering: it may pause only so long
            deadline = self.last_callback + self.stall_timeout_s
        else:
            deadline = self._opened_at + self.startup_grace_s
        return "stalled" if time.monotonic() > deadline else None


# --- watching for hot-plug --------------------------------------------------------------------------


def device_signature() -> tuple | None:
    """Something that changes when the set of devices PortAudio would list changes, costing a few stat
    calls. On Linux PortAudio reaches devices through ALSA: sound cards (/proc/asound/cards), the
    PCMs its configuration files define (how PulseAudio/PipeWire devices get names) and whether a
    sound server is up (ALSA's `default` goes through it when it is). None where no
    such signature is known: the watcher then re-initialises only while no stream is open."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/proc/asound/cards", "rb") as cards:
            card_list = cards.read()
    except OSError:
        card_list = b""
    stamps = []
    for path in _alsa_config_files() + _sound_server_sockets():
        try:
            info = os.stat(path)
            stamps.append((path, info.st_mtime_ns, info.st_size))
        except OSError:
            stamps.append((path, None, None))
    return (card_list, tuple(stamps))


def _sound_server_sockets() -> list[str]:
    """A sound server starting or stopping changes what ALSA's `default` is (its hook checks at load)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    server = os.environ.get("PULSE_SERVER", "")
    sockets = [server[len("unix:"):]] if server.startswith("unix:") else []
    if runtime:
        sockets += [os.path.join(runtime, "pulse", "native"), os.path.join(runtime, "pipewire-0")]
    return sockets


def _alsa_config_files() -> list[str]:
    explicit = os.environ.get("ALSA_CONFIG_PATH", "")
    files = [part for part in explicit.replace(" ", ":").split(":") if part] or ["/usr/share/alsa/alsa.conf"]
    config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    files += [
        "/etc/asound.conf",
        os.path.expanduser("~/.asoundrc"),
        os.path.join(config_home, "alsa", "asoundrc"),
    ]
    for folder in ("/etc/alsa/conf.d", "/usr/share/alsa/alsa.conf.d"):
        files += sorted(glob.glob(os.path.join(folder, "*.conf")))
    return files


class DeviceWatcher:
    """Polls for hot-plugged or removed devices and calls `on_change(devices)` from its own thread.

    A poll is a few stat calls; PortAudio is re-initialised (see refresh) only when they differ, and
    `on_change` fires only when the listed devices or the defaults really differ afterwards.
    """

    def __init__(self, on_change: Callable[[list[AudioDevice]], None], interval_s: float = 2.0,
                 on_error: Callable[[str], None] | None = None):
        self._on_change = on_change
        self._on_error = on_error
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._signature: tuple | None = None
        self._known: list[tuple] = []

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._signature = device_signature()
        self._known = self._keys(self._safe_list())
        self._thread = threading.Thread(target=self._run, name="audio-device-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def check_now(self) -> bool:
        """One poll, on the caller's thread; True when the device set changed (on_change was called)."""
        signature = device_signature()
        if signature is None:
            if _open_streams:
                return False  # re-initialising would interrupt them, and nothing says it is needed
        elif signature == self._signature:
            return False
        self._signature = signature
        try:
            devices = refresh()
        except Exception as error:  # PortAudio failing to come back is a message, not a dead thread
            if self._on_error is not None:
                self._on_error(f"Could not list audio devices: {describe_error(error)}")
            return False
        keys = self._keys(devices)
        if keys == self._known:
            return False
        self._known = keys
        self._on_change(devices)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.check_now()
            except Exception:  # an on_change handler bug must not end hot-plug detection
                log.exception("device watcher poll failed")

    @staticmethod
    def _keys(devices: list[AudioDevice]) -> list[tuple]:
        return sorted((*d.key(), d.is_default_input, d.is_default_output) for d in devices)

    @staticmethod
    def _safe_list() -> list[AudioDevice]:
        try:
            return list_devices()
        except AudioDeviceError:
            return []
