"""A program in a real pseudo-terminal, driven as a person would: every wait
is for text on the screen, bounded by a deadline; no fixed sleeps."""
import os, pty, select, sys, time


class Pty:
    def __init__(self, argv):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execvp(argv[0], argv)
        self.buf = b""

    def _read(self, timeout):
        r, _, _ = select.select([self.fd], [], [], timeout)
        if not r:
            return None
        try:
            return os.read(self.fd, 4096)
        except OSError:
            return b""

    def wait_for(self, text: bytes, timeout: float) -> None:
        # the bound only ends a hang: PIM_TEST_SLOW (helper.bash sets it) scales it on a busy machine
        end = time.monotonic() + timeout * float(os.environ.get("PIM_TEST_SLOW") or 1)
        while text not in self.buf:
            left = end - time.monotonic()
            if left <= 0:
                sys.exit(f"timed out waiting for {text!r}; got {self.buf[-400:]!r}")
            chunk = self._read(left)
            if chunk == b"":
                sys.exit(f"the program ended early; got {self.buf[-400:]!r}")
            if chunk:
                self.buf += chunk

    def type(self, text: bytes) -> None:
        os.write(self.fd, text)

    def exit_code(self) -> int:
        """Read until the program closes the terminal, then reap it."""
        while self._read(None):
            pass
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status)
