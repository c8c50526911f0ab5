"""One Confide per person: the first instance listens on a local socket; later launches (`confide --toggle`,
a second click on the launcher) hand it a command and exit.

The wire format is one line each way: the command, then "ok" (or "unknown") from the instance.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from PySide6.QtCore import QDir, QLockFile, QObject, Signal
from PySide6.QtNetwork import QLocalServer, QLocalSocket

log = logging.getLogger(__name__)

COMMANDS = frozenset({"toggle", "ask-screen", "stop", "show", "quit"})
MAX_LINE = 64  # commands are short words: anything longer is not a Confide talking
PROBE_TIMEOUT_MS = 500


def default_server_name() -> str:
    """The socket name for this user. On Unix a path in the private runtime folder where there is one (a
    name in /tmp could be taken first by another user); a per-user pipe name elsewhere."""
    if sys.platform.startswith("win"):
        return f"confide-{os.environ.get('USERNAME', 'user')}"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "confide.sock")
    return f"confide-{os.getuid()}"


class SingleInstance(QObject):
    """Owns `server_name` for this process once `claim()` succeeds; commands from other launches arrive as
    `command_received(command)` in the GUI thread."""

    command_received = Signal(str)

    def __init__(self, server_name: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.server_name = server_name
        self._server = QLocalServer(self)
        self._server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)  # this user only
        self._server.newConnection.connect(self._on_new_connection)
        self._lock: QLockFile | None = None

    def claim(self) -> bool:
        """Become the instance. False when another live instance holds the name; what a crashed instance left
        behind (its lock, its socket) is taken over."""
        if self._server.isListening():
            return True
        # The lock decides, not the socket: Qt's listen() silently replaces a live server's socket. Qt finds
        # a lock whose process has died stale and takes it over.
        lock = QLockFile(_lock_path(self.server_name))
        lock.setStaleLockTime(0)  # a lock held for days by a live instance is not stale
        if not lock.tryLock(0):
            return False
        if _someone_listens(self.server_name):  # e.g. a cleaner deleted the live instance's lock file
            lock.unlock()
            return False
        QLocalServer.removeServer(self.server_name)  # the socket file a crashed instance left behind
        if not self._server.listen(self.server_name):
            log.warning("cannot listen on %s: %s", self.server_name, self._server.errorString())
            lock.unlock()
            return False
        self._lock = lock
        return True

    def release(self) -> None:
        """Stop being the instance (at quit: the next launch finds no socket)."""
        self._server.close()
        if self._lock is not None:
            self._lock.unlock()
            self._lock = None

    @property
    def claimed(self) -> bool:
        return self._server.isListening()

    def full_server_name(self) -> str:
        return self._server.fullServerName()

    def _on_new_connection(self) -> None:
        while (connection := self._server.nextPendingConnection()) is not None:
            connection.readyRead.connect(lambda c=connection: self._read_commands(c))
            connection.disconnected.connect(connection.deleteLater)
            self._read_commands(connection)  # bytes may have arrived with the connection

    def _read_commands(self, connection: QLocalSocket) -> None:
        while connection.canReadLine():
            command = bytes(connection.readLine()).decode("utf-8", "replace").strip()
            known = command in COMMANDS
            connection.write(b"ok\n" if known else b"unknown\n")
            connection.flush()
            if known:
                self.command_received.emit(command)
            else:
                log.warning("ignoring an unknown instance command %r", command[:MAX_LINE])
        if connection.bytesAvailable() > MAX_LINE:
            connection.abort()  # a flood with no newline: not one of ours


def _lock_path(server_name: str) -> str:
    if os.path.isabs(server_name):
        return server_name + ".lock"
    return os.path.join(QDir.tempPath(), server_name + ".lock")


def _someone_listens(server_name: str) -> bool:
    probe = QLocalSocket()
    probe.connectToServer(server_name)
    alive = probe.waitForConnected(PROBE_TIMEOUT_MS)
    probe.abort()
    return alive


def send_command(server_name: str, command: str, timeout_ms: int = 2000) -> bool:
    """Hand `command` to the running instance and wait for its acknowledgement. True when it was received.
    Blocking, and needs no event loop (nor a QCoreApplication): made for `confide --toggle` and friends."""
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r} (known: {', '.join(sorted(COMMANDS))})")
    deadline = time.monotonic() + timeout_ms / 1000

    def remaining_ms() -> int:
        return max(1, int((deadline - time.monotonic()) * 1000))

    socket = QLocalSocket()
    try:
        socket.connectToServer(server_name)
        if not socket.waitForConnected(remaining_ms()):
            return False
        socket.write(command.encode() + b"\n")
        if not socket.waitForBytesWritten(remaining_ms()):
            return False
        while not socket.canReadLine():
            if time.monotonic() >= deadline or not socket.waitForReadyRead(remaining_ms()):
                return False
        return bytes(socket.readLine()).strip() == b"ok"
    finally:
        socket.abort()
