"""`confide doctor`: checks that each part Confide depends on works here, and says how to fix what does not.

One module per check (audio, hotkeys, screen, models, engine), each returning `Check`s (result.py);
command.py runs them and turns them into text, JSON and an exit code.
"""
