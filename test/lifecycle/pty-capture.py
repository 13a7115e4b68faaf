#!/usr/bin/env python3
"""Run a command with a real pseudo-terminal as its stdin, stdout and stderr,
and copy every byte it wrote to our stdout (for a test to look at what a
terminal would have received); exit with the command's status."""
import os, sys
sys.path.insert(0, os.path.dirname(__file__))
from ptylib import Pty

p = Pty(sys.argv[1:])
while True:
    chunk = p._read(120)
    if not chunk:  # closed (b"") or 120 s of silence (None): the command is done or hung
        break
    p.buf += chunk
sys.stdout.buffer.write(p.buf)
_, status = os.waitpid(p.pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
