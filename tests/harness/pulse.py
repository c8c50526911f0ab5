"""A real PulseAudio server with a virtual microphone and speaker, for tests and benchmarks.

    from tests.harness.pulse import pulse_audio  # noqa: F401  (a pytest fixture)

    def test_something(pulse_audio):
        with pulse_audio.record_speaker() as heard:     # what the virtual speaker plays, timestamped
            ...                                         # play through PortAudio's default device
        feed = pulse_audio.feed_mic(speech, 24_000)     # "speak" into the default microphone
        pulse_audio.add_sink("usb_headset")             # hot-plug; unplug(name), plug(name),
        pulse_audio.unplug_everything()                 # unplug_everything(), restore()

Helpers for what was recorded: `find_signal` (where and how well), `matching_windows` (intact
despite a scheduling hiccup), `sound_ms`, `to_rate`; `report` prints a measured number.

Layout: the null sink `spk` is the default output; the mic is `mic`, a remap of the null sink
`micfeed`'s monitor, so whatever is played into `micfeed` is what the microphone hears. Both run at
48 kHz, so a 48 kHz stream comes out of `spk.monitor` bit-exact.

PortAudio (Debian's is ALSA-only) reaches PulseAudio through the ALSA pulse plugin: `default` and
`pulse` follow PulseAudio's defaults. So that named devices can be listed, opened and hot-plugged,
the harness writes an ALSA configuration (pointed at by ALSA_CONFIG_PATH) with one PCM per virtual
device, named like the device, and rewrites it on every plug and unplug. Unplugging one device does
not end a stream on it: PulseAudio moves the stream to another device, as on a desktop. Only with
nothing left to move to (`unplug_everything`) does a stream die, which is how device loss is tested.

One server per test process (started on first use, stopped by PID at exit, and killed with the
process if pytest itself dies); every test module gets it back in its standard layout. In CI
(CI=true) anything missing is a failure, never a skip.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soxr

from tests.harness.xdo import DIE_WITH_PARENT, stop_process

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

APT_PACKAGES = "pulseaudio pulseaudio-utils libportaudio2 libasound2-plugins"
BINARIES = ("pulseaudio", "pactl", "pacat", "parec")
# The ALSA plugin that lets ALSA-only PortAudio reach PulseAudio (libasound2-plugins).
PULSE_PLUGIN_GLOB = "/usr/lib/*/alsa-lib/libasound_module_pcm_pulse.so"

RATE = 48_000
SPEAKER = "spk"
MIC = "mic"
MIC_FEED = "micfeed"
# The sink the mic listens to is a harness detail, not a device the app should see.
_HIDDEN_FROM_ALSA = {MIC_FEED}


class HarnessUnavailable(RuntimeError):
    """A program or library the harness needs is not installed, or the server would not start."""


@dataclass
class _Device:
    name: str
    kind: str  # "sink" or "source"
    module: str
    arguments: str
    channels: int
    module_id: int | None = None
    depends_on: str | None = None  # a device this one is built on (unloading that unloads this)


@dataclass
class Recording:
    """What a PulseAudio source delivered, with when each chunk reached this process."""

    source: str
    rate: int = RATE
    _chunks: list[bytes] = field(default_factory=list)
    _ends: list[int] = field(default_factory=list)  # sample count after each chunk
    _arrivals: list[float] = field(default_factory=list)  # time.monotonic() when it arrived
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pending: bytes = b""

    def _add(self, data: bytes, arrival: float) -> None:
        data = self._pending + data
        whole = len(data) - len(data) % 2
        self._pending = data[whole:]
        if not whole:
            return
        with self._lock:
            self._chunks.append(data[:whole])
            self._ends.append((self._ends[-1] if self._ends else 0) + whole // 2)
            self._arrivals.append(arrival)

    @property
    def samples(self) -> int:
        with self._lock:
            return self._ends[-1] if self._ends else 0

    def audio(self) -> np.ndarray:
        """Everything recorded so far, float32 mono at `rate` (bit-exact from s16)."""
        with self._lock:
            data = b"".join(self._chunks)
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0

    def time_of(self, index: float) -> float:
        """The monotonic time sample `index` reached this process, with delivery jitter removed: the
        source's clock is steady, so the least-delayed chunk (lower envelope) fixes the offset."""
        with self._lock:
            ends = np.asarray(self._ends, dtype=np.float64)
            arrivals = np.asarray(self._arrivals)
        if ends.size == 0:
            raise AssertionError(f"nothing recorded from {self.source} yet")
        offset = float(np.min(arrivals - ends / self.rate))
        return offset + index / self.rate

    def index_at(self, moment: float) -> int:
        """The inverse of time_of: how many samples had arrived by monotonic time `moment`."""
        return int(round((moment - self.time_of(0)) * self.rate))


class Recorder:
    """parec on a source (a monitor: bit-exact at 48 kHz), read on a thread with arrival times."""

    def __init__(self, harness: PulseHarness, source: str, latency_ms: int = 5):
        self.recording = Recording(source)
        self._process = subprocess.Popen(
            [*DIE_WITH_PARENT, "parec", "-d", source, "--raw", "--format=s16le", f"--rate={RATE}", "--channels=1",
             f"--latency-msec={latency_ms}"],
            env=harness.client_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._reader = threading.Thread(target=self._read, name=f"parec-{source}", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 5.0
        while self.recording.samples == 0:  # live before the caller does anything worth hearing
            if time.monotonic() > deadline or self._process.poll() is not None:
                self.stop()
                raise HarnessUnavailable(f"parec on {source} delivered nothing in 5 s")
            time.sleep(0.002)

    def _read(self) -> None:
        fd = self._process.stdout.fileno()
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
            if not data:
                return
            self.recording._add(data, time.monotonic())

    def stop(self) -> Recording:
        stop_process(self._process)
        self._reader.join(timeout=2.0)
        if self._process.stdout is not None:
            self._process.stdout.close()
        return self.recording


class Feed:
    """Audio being played into the mic's feed sink by pacat (at 48 kHz, so it reaches the mic exactly)."""

    def __init__(self, harness: PulseHarness, audio_48k: np.ndarray):
        self.audio = audio_48k
        self.started = time.monotonic()
        self._process = subprocess.Popen(
            [*DIE_WITH_PARENT, "pacat", "--playback", "-d", MIC_FEED, "--raw", "--format=float32le", f"--rate={RATE}",
             "--channels=1", "--latency-msec=80"],
            env=harness.client_env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._writer = threading.Thread(target=self._write, daemon=True)
        self._writer.start()

    def _write(self) -> None:
        try:
            self._process.stdin.write(self.audio.astype("<f4").tobytes())
            self._process.stdin.close()
        except (BrokenPipeError, ValueError):
            pass  # stopped early on purpose

    def wait(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        self._writer.join(timeout)
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        self._process.wait(remaining)

    def stop(self) -> None:
        stop_process(self._process)
        self._writer.join(timeout=2.0)


class PulseHarness:
    """A private PulseAudio server and the ALSA names that let PortAudio reach its devices."""

    def __init__(self):
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="confide-pulse-"))  # mkdtemp makes it 0700
        self.socket = self.runtime_dir / "pulse" / "native"
        self.alsa_config = self.runtime_dir / "asoundrc"
        self.log_path = self.runtime_dir / "pulseaudio.log"
        self._server: subprocess.Popen | None = None
        self._keepalives: dict[str, subprocess.Popen] = {}
        self._devices: dict[str, _Device] = {}
        self._saved_env: dict[str, str | None] = {}
        self.startup_s = 0.0

    # --- lifecycle ---------------------------------------------------------------------------------

    @property
    def client_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self._env_changes())
        return env

    def _env_changes(self) -> dict[str, str]:
        return {
            "PULSE_SERVER": f"unix:{self.socket}",
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "PULSE_CLIENTCONFIG": str(self.runtime_dir / "client.conf"),  # autospawn = no
            "ALSA_CONFIG_PATH": f"/usr/share/alsa/alsa.conf:{self.alsa_config}",
        }

    def start(self) -> PulseHarness:
        began = time.monotonic()
        missing = [name for name in BINARIES if shutil.which(name) is None]
        if not glob.glob(PULSE_PLUGIN_GLOB):
            missing.append("the ALSA pulse plugin")
        if missing:
            what = ", ".join(missing)
            raise HarnessUnavailable(
                f"missing {what}; install: apt-get install -y --no-install-recommends {APT_PACKAGES}"
            )
        (self.runtime_dir / "pulse").mkdir(mode=0o700, exist_ok=True)
        (self.runtime_dir / "client.conf").write_text("autospawn = no\n")
        self._write_alsa_config()
        env = self.client_env
        env.pop("PULSE_SERVER")  # the server must not try to reach itself as a client
        with open(self.log_path, "wb") as log:
            self._server = subprocess.Popen(
                [*DIE_WITH_PARENT, "pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit",
                 "--log-target=stderr", "--use-pid-file=no",
                 "-L", f"module-native-protocol-unix auth-anonymous=1 socket={self.socket}"],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        atexit.register(self.stop)
        try:
            self._wait_ready()
            self._standard_devices()
            self.restore()
            self._point_this_process_here()
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - began
        return self

    def stop(self) -> None:
        for process in self._keepalives.values():
            stop_process(process)
        self._keepalives.clear()
        if self._server is not None:
            stop_process(self._server)
            self._server = None
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 10.0
        while True:
            if self._server.poll() is not None:
                raise HarnessUnavailable(f"pulseaudio exited ({self._server.returncode}): {self.log_tail()}")
            if self.socket.exists() and self.pactl("info", check=False).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise HarnessUnavailable(f"pulseaudio not ready after 10 s: {self.log_tail()}")
            time.sleep(0.02)

    def _point_this_process_here(self) -> None:
        """PortAudio and ALSA in this process talk to this server from now on."""
        for key, value in self._env_changes().items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value
        import sounddevice as sd  # scans devices at import and on initialise: do it with the server up

        sd._terminate()
        sd._initialize()

    # --- commands ----------------------------------------------------------------------------------

    def pactl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(["pactl", *args], env=self.client_env, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=10)
        if check and result.returncode != 0:
            raise AssertionError(f"pactl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def sinks(self) -> list[str]:
        return [line.split("\t")[1] for line in self.pactl("list", "short", "sinks").stdout.splitlines()]

    def sources(self) -> list[str]:
        return [line.split("\t")[1] for line in self.pactl("list", "short", "sources").stdout.splitlines()]

    # --- devices: the standard layout, hot-plug ----------------------------------------------------

    def _standard_devices(self) -> None:
        self._devices = {
            SPEAKER: _Device(SPEAKER, "sink", "module-null-sink", f"sink_name={SPEAKER} rate={RATE} channels=2", 2),
            MIC_FEED: _Device(MIC_FEED, "sink", "module-null-sink", f"sink_name={MIC_FEED} rate={RATE} channels=1", 1),
            MIC: _Device(MIC, "source", "module-remap-source", f"source_name={MIC} master={MIC_FEED}.monitor", 1,
                         depends_on=MIC_FEED),
        }

    def restore(self) -> None:
        """Back to the standard layout: spk, micfeed and mic plugged in and default, extras removed."""
        for name in [n for n in self._devices if n not in (SPEAKER, MIC_FEED, MIC)]:
            self.unplug(name)
            del self._devices[name]
        for name in (SPEAKER, MIC_FEED, MIC):
            if self._devices[name].module_id is None or not self._present(name):
                self.plug(name)
        self.pactl("set-default-sink", SPEAKER)
        self.pactl("set-default-source", MIC)

    def add_sink(self, name: str, channels: int = 2) -> None:
        """Plug in a new output device (a null sink), visible to PortAudio after a refresh."""
        self._devices[name] = _Device(name, "sink", "module-null-sink",
                                      f"sink_name={name} rate={RATE} channels={channels}", channels)
        self.plug(name)

    def add_source(self, name: str) -> None:
        """Plug in a new input device (a silent null source)."""
        self._devices[name] = _Device(name, "source", "module-null-source", f"source_name={name} rate={RATE}", 1)
        self.plug(name)

    def plug(self, name: str) -> None:
        device = self._devices[name]
        if device.depends_on is not None and not self._present(device.depends_on):
            self.plug(device.depends_on)
        if not self._present(name):
            result = self.pactl("load-module", device.module, *device.arguments.split())
            device.module_id = int(result.stdout.strip())
        if device.kind == "sink":
            self._keep_alive(name, device.channels)
        self._write_alsa_config()
        if device.kind == "sink":
            self._wake(name)

    def unplug(self, name: str) -> None:
        """Remove a device as if its cable were pulled: its module is unloaded (and those built on it)."""
        device = self._devices[name]
        if device.module_id is not None and self._present(name):
            self.pactl("unload-module", str(device.module_id))
        device.module_id = None
        for other in self._devices.values():
            if other.depends_on == name:
                other.module_id = None
        keepalive = self._keepalives.pop(name, None)
        if keepalive is not None:
            stop_process(keepalive)
        self._write_alsa_config()

    def unplug_everything(self) -> None:
        """No sink and no source left: PulseAudio has nowhere to move a stream, so streams die."""
        for name in list(self._devices):
            if self._devices[name].module_id is not None:
                self.unplug(name)

    def _present(self, name: str) -> bool:
        device = self._devices[name]
        return name in (self.sinks() if device.kind == "sink" else self.sources())

    def _keep_alive(self, sink: str, channels: int) -> None:
        """An idle null sink delivers late (0.6-2 s) or nothing: keep a silent stream playing into it."""
        old = self._keepalives.pop(sink, None)
        if old is not None:
            stop_process(old)
        self._keepalives[sink] = subprocess.Popen(
            [*DIE_WITH_PARENT, "pacat", "--playback", "-d", sink, "--latency-msec=10", "--raw", "--format=s16le",
             f"--rate={RATE}", f"--channels={channels}", "/dev/zero"],
            env=self.client_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def _wake(self, sink: str) -> None:
        """A fresh null sink sleeps through its first 2 s block whatever streams join it; a suspend and
        resume once the keep-alive is playing restarts its timer at the short latency (0.1 s, not 2 s)."""
        index = next(line.split("\t")[0] for line in self.pactl("list", "short", "sinks").stdout.splitlines()
                     if line.split("\t")[1] == sink)
        deadline = time.monotonic() + 5.0
        while not any(line.split("\t")[1] == index
                      for line in self.pactl("list", "short", "sink-inputs").stdout.splitlines()):
            if time.monotonic() > deadline:
                raise HarnessUnavailable(f"the keep-alive stream never reached sink {sink}")
            time.sleep(0.01)
        self.pactl("suspend-sink", sink, "1")
        self.pactl("suspend-sink", sink, "0")
        Recorder(self, f"{sink}.monitor").stop()  # returns once the monitor delivers

    def _write_alsa_config(self) -> None:
        """One ALSA PCM per plugged virtual device, one direction each, named like the device."""
        entries = []
        for device in self._devices.values():
            if device.module_id is None or device.name in _HIDDEN_FROM_ALSA:
                continue
            direction = "playback" if device.kind == "sink" else "capture"
            entries.append(
                f'pcm.{device.name} {{\n  type asym\n  {direction}.pcm {{ type pulse; device "{device.name}" }}\n'
                f'  hint {{ show on; description "Virtual {device.kind} {device.name}" }}\n}}\n'
            )
        temporary = self.alsa_config.with_suffix(".tmp")
        temporary.write_text("".join(entries) or "# no virtual devices plugged in\n")
        os.replace(temporary, self.alsa_config)  # ALSA may re-read it at any moment: never half-written

    # --- the virtual microphone and speaker --------------------------------------------------------

    def feed_mic(self, audio: np.ndarray, rate: int) -> Feed:
        """Play `audio` (float32 mono at `rate`) into the microphone; returns at once."""
        audio = np.asarray(audio, dtype=np.float32)
        if rate != RATE:
            audio = soxr.resample(audio, rate, RATE, quality="HQ").astype(np.float32)
        return Feed(self, audio)

    @contextlib.contextmanager
    def record(self, source: str) -> Iterator[Recording]:
        recorder = Recorder(self, source)
        try:
            yield recorder.recording
        finally:
            recorder.stop()

    def record_speaker(self) -> contextlib.AbstractContextManager[Recording]:
        """What the virtual speaker plays, bit-exact at 48 kHz."""
        return self.record(f"{SPEAKER}.monitor")

    def record_mic_feed(self) -> contextlib.AbstractContextManager[Recording]:
        """What the microphone hears, at the moment it hears it."""
        return self.record(f"{MIC_FEED}.monitor")


# --- pytest ----------------------------------------------------------------------------------------

_shared: PulseHarness | None = None
_shared_lock = threading.Lock()


def shared_harness() -> PulseHarness:
    """The process's one PulseAudio harness, started on first use (raises HarnessUnavailable)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = PulseHarness().start()
        return _shared


@pytest.fixture(scope="module")
def pulse_audio() -> Iterator[PulseHarness]:
    """The shared harness in its standard layout; put back in it after the module, pass or fail."""
    try:
        harness = shared_harness()
    except HarnessUnavailable as error:
        if IN_CI:
            pytest.fail(f"PulseAudio harness unavailable: {error}", pytrace=False)
        pytest.skip(f"PulseAudio harness unavailable: {error}")
    harness.restore()
    try:
        yield harness
    finally:
        harness.restore()


def find_signal(haystack: np.ndarray, needle: np.ndarray) -> tuple[int, float]:
    """Where `needle` best matches inside `haystack` (FFT cross-correlation), and the normalised
    correlation there (1.0: identical up to gain)."""
    haystack = np.asarray(haystack, dtype=np.float64)
    needle = np.asarray(needle, dtype=np.float64)
    if len(needle) > len(haystack) or not np.any(needle):
        return 0, 0.0
    size = 1 << int(np.ceil(np.log2(len(haystack) + len(needle))))
    scores = np.fft.irfft(np.fft.rfft(haystack, size) * np.conj(np.fft.rfft(needle, size)), size)
    scores = scores[: len(haystack) - len(needle) + 1]
    # Normalised by the energy under the needle at each offset: a loud stretch is not a match.
    energy = np.concatenate(([0.0], np.cumsum(haystack * haystack)))
    under = energy[len(needle) :] - energy[: len(haystack) - len(needle) + 1]
    offset = int(np.argmax(scores / np.sqrt(np.maximum(under, 1e-12))))
    window = haystack[offset : offset + len(needle)]
    norm = np.linalg.norm(window) * np.linalg.norm(needle)
    return offset, float(np.dot(window, needle) / norm) if norm else 0.0


def matching_windows(recorded: np.ndarray, reference: np.ndarray, window_ms: int = 50,
                     threshold: float = 0.99, rate: int = RATE, gap_ms: int = 400) -> float:
    """The share of `reference`'s non-silent 50 ms windows found intact in `recorded`, each looked for
    where the one before it was found. A scheduling hiccup on a loaded machine (a late block: a few ms
    dropped or a gap) spoils one window, not everything after it the way one global correlation would;
    a device that ran dry plays its own silence and shifts all that follows, so a window not found near
    the line is looked for up to `gap_ms` either side and, found there, moves the line."""
    offset, _ = find_signal(recorded, reference)
    size = rate * window_ms // 1000
    slack = size  # a hiccup shifts what follows by a few ms at most
    gap = rate * gap_ms // 1000

    def found_near(piece: np.ndarray, at: int, span: int) -> tuple[int, float]:
        low = max(0, at - span)
        where, correlation = find_signal(recorded[low : at + size + span], piece)
        return low + where, correlation

    good = total = 0
    for start in range(0, len(reference) - size + 1, size):
        piece = reference[start : start + size]
        if np.abs(piece).max() < 0.01:
            continue
        total += 1
        where, correlation = found_near(piece, offset + start, slack)
        if correlation <= threshold:
            where, correlation = found_near(piece, offset + start, gap)
        if correlation > threshold:
            good += 1
            offset = where - start
    return good / total if total else 0.0


def sound_ms(audio: np.ndarray, rate: int = RATE) -> float:
    """How long `audio` is not silent, in whole ms: 1 ms windows holding any non-zero sample
    (silence around and between replies is exact zeros)."""
    per_ms = rate // 1000
    windows = audio[: len(audio) - len(audio) % per_ms].reshape(-1, per_ms)
    return float(np.count_nonzero(np.abs(windows).max(axis=1) > 0.0))


def to_rate(audio: np.ndarray, rate: int, to: int = RATE) -> np.ndarray:
    return np.asarray(audio, np.float32) if rate == to else soxr.resample(audio, rate, to, quality="HQ")


def report(name: str, value: float | str, unit: str = "") -> None:
    """A measured number, printed in one greppable form (run pytest with -s to see them)."""
    shown = f"{value:.1f}" if isinstance(value, float) else str(value)
    print(f"\n[audio] {name}: {shown}{(' ' + unit) if unit else ''}", flush=True)


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.005, what: str = "condition") -> float:
    """Poll until `predicate()` is truthy; the seconds it took. Fails the test on timeout."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start
