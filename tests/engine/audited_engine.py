"""A Python audit hook that records, one JSON line each, every network address a process touches (connect,
bind, sendto, getaddrinfo) and every file it opens for writing. The security tests install it in an engine
started by the app's supervisor, through a `sitecustomize` module (`SITECUSTOMIZE`), so it is in place before
the engine imports anything. Native libraries writing on their own are not seen by it; the tests check for
those by the files left behind."""

from __future__ import annotations

import json
import os
import sys

LOG_ENV = "CONFIDE_AUDIT_LOG"
SITECUSTOMIZE = f"""import os
if os.environ.get("{LOG_ENV}"):
    from tests.engine.audited_engine import install
    install(os.environ["{LOG_ENV}"])
"""
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def install(log_path: str) -> None:
    descriptor = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # before the hook: not logged

    def record(**fields) -> None:
        os.write(descriptor, (json.dumps(fields, default=repr) + "\n").encode())  # os.write is not audited

    def hook(event: str, args: tuple) -> None:
        if event in ("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"):
            record(event=event, family=int(getattr(args[0], "family", -1)), address=args[1])
        elif event == "socket.getaddrinfo":
            record(event=event, host=args[0], port=args[1])
        elif event == "open":
            path, mode, flags = args
            writes = (flags & _WRITE_FLAGS) if isinstance(flags, int) else any(c in (mode or "") for c in "wax+")
            if writes and not isinstance(path, int):
                caller = sys._getframe(1)
                where = []
                while caller is not None and len(where) < 8:  # who opened it, for the failure message
                    where.append(f"{caller.f_code.co_filename}:{caller.f_code.co_name}:{caller.f_lineno}")
                    caller = caller.f_back
                record(event=event, path=os.fsdecode(path), where=where)

    sys.addaudithook(hook)
