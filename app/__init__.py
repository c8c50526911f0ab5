"""Confide's desktop app: tray, hotkeys, microphone, playback and the window. Talks to the engine only
through the Realtime protocol."""
