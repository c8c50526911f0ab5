"""`confide bench`: the real app measured on a real (virtual) desktop, as a person would feel it.

A developer tool: it needs a source checkout, whose test harness provides the X display with a tray
host (Xvfb, trayer) and the PulseAudio virtual microphone and speaker. Everything is timed where a
person would notice it: keys from the X server, sound at the virtual devices.
"""
