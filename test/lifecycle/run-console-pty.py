#!/usr/bin/env python3
"""`pim-run IMAGE --console` in a real pseudo-terminal: wait for the guest's
shell on the terminal, power it off from inside, and check that pim-run
returns QEMU's status (0). Every wait is for text, bounded by a deadline."""
import os, pty, select, sys, time

args = sys.argv[1:]
pid, fd = pty.fork()
if pid == 0:
    os.execvp("pim-run", ["pim-run", *args, "--console"])

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
                sys.exit(f"pim-run ended early; got {buf[-400:]!r}")
            buf += chunk

wait_for(b"Welcome to pim-testbed", 180)
os.write(fd, b"\r")
os.write(fd, b"echo on-the-$((6*7))-console\r")
wait_for(b"on-the-42-console", 30)
os.write(fd, b"poweroff -f\r")
# drain until pim-run exits
while True:
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
_, status = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(status)
print("exited" if code == 0 else f"exit {code}")
sys.exit(code)
