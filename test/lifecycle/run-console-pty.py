#!/usr/bin/env python3
"""`pim-run IMAGE --console` in a real pseudo-terminal: wait for the guest's
shell on the terminal, power it off from inside, and check that pim-run
returns QEMU's status (0)."""
import os, sys
sys.path.insert(0, os.path.dirname(__file__))
from ptylib import Pty

p = Pty(["pim-run", *sys.argv[1:], "--console"])
p.wait_for(b"Welcome to pim-testbed", 180)
p.type(b"\r")
p.type(b"echo on-the-$((6*7))-console\r")
p.wait_for(b"on-the-42-console", 30)
p.type(b"poweroff -f\r")
code = p.exit_code()
print("exited" if code == 0 else f"exit {code}")
sys.exit(code)
