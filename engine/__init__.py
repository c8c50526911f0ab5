"""Confide's engine: local speech models behind an OpenAI-Realtime-compatible WebSocket server.

The engine never imports the app or Qt; it is reachable only through the protocol.
"""
