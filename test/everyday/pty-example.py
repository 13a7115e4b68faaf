#!/usr/bin/env python3
"""Run one shell example (`bash -c TEXT`) in a real pseudo-terminal, driven as a
person would: each STEP is WAIT=>KEYS, wait (bounded) for WAIT on the screen,
then type KEYS (Python escapes: \\x1d is Ctrl-], \\x01x is Ctrl-A x). Exits with
the example's status once it closes the terminal.

  pty-example.py TEXT [STEP...]
"""
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lifecycle"))
from ptylib import Pty

p = Pty(["bash", "-c", sys.argv[1]])
for step in sys.argv[2:]:
    wait, _, keys = step.partition("=>")
    p.wait_for(wait.encode(), 180)
    p.type(keys.encode().decode("unicode_escape").encode("latin-1"))
sys.exit(p.exit_code())
