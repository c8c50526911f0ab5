"""Confide's engine: local speech models behind an OpenAI-Realtime-compatible WebSocket server.

The engine never imports the app or Qt; it is reachable only through the protocol.
"""

import os as _os

# OpenBLAS starts a spinning thread per core for every numpy matrix product; on 2 cores beside the
# model threads an 80x201 product took 8-16 ms instead of 0.3 ms. Set before numpy is first imported.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
