#!/usr/bin/env python3
"""Drive `pim-console NAME` in a real pseudo-terminal, as a person would:
wait for the attach message, type a command, wait for its output, press
Ctrl-] and check that pim-console detaches with status 0. Every wait is for
text, bounded by a deadline; no fixed sleeps."""
import os, pty, select, sys, time

name = sys.argv[1]
pid, fd = pty.fork()
if pid == 0:
    os.execvp("pim-console", ["pim-console", name])

buf = b""
def wait_for(text: bytes, timeout: float) -> None:
    global buf
    end = time.monotonic() + timeout
    while text not in buf:
        left = end - time.monotonic()
        if left <= 0:
            sys.exit(f"timed out waiting for {text!r}; got {buf[-400:]!r}")
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                sys.exit(f"pim-console ended early; got {buf[-400:]!r}")
            buf += chunk

wait_for(b"Ctrl-] detaches", 10)
os.write(fd, b"\r")
os.write(fd, b"echo pim-$((6*7))\r")
wait_for(b"pim-42", 30)
os.write(fd, b"\x1d")
wait_for(b"[detached]", 10)
_, status = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(status)
print("detached" if code == 0 else f"exit {code}")
sys.exit(code)
