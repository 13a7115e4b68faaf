#!/usr/bin/env python3
"""`pim-console NAME` in a real pseudo-terminal: wait for the attach message,
type a command, wait for its output, press Ctrl-] and check that pim-console
detaches with status 0."""
import os, sys
sys.path.insert(0, os.path.dirname(__file__))
from ptylib import Pty

p = Pty(["pim-console", sys.argv[1]])
p.wait_for(b"Ctrl-] detaches", 10)
p.type(b"\r")
p.type(b"echo pim-$((6*7))\r")
p.wait_for(b"pim-42", 30)
p.type(b"\x1d")
p.wait_for(b"[detached]", 10)
code = p.exit_code()
print("detached" if code == 0 else f"exit {code}")
sys.exit(code)
