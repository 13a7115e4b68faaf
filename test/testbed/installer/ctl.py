#!/usr/bin/env python3
"""Talk to a QEMU guest for verify.sh: QMP, the guest agent, the keyboard.

  ctl.py qmp SOCKET JSON...         QMP commands after capabilities negotiation; prints the replies
  ctl.py keys SOCKET KEYS           type KEYS on the guest's keyboard through QMP send-key, as
                                    Packer's boot_command does over VNC: <esc>, <enter>, <wait>
                                    (one second) and plain text
  ctl.py ga SOCKET JSON...          guest agent commands after guest-sync-delimited; prints the
                                    replies (guest-shutdown has none: it is sent, not awaited)
  ctl.py ga-cat SOCKET PATH         print a guest file (guest-file-open/read/close)

Every call is bounded by a timeout (CTL_TIMEOUT, default 20 s); exit status 1 on errors.
"""
import base64
import json
import os
import random
import socket
import sys
import time

TIMEOUT = float(os.environ.get("CTL_TIMEOUT", "20"))
NO_REPLY = {"guest-shutdown", "guest-suspend-disk", "guest-suspend-ram", "guest-suspend-hybrid"}


class Conn:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(TIMEOUT)
        self.s.connect(path)
        self.buf = b""

    def send(self, obj):
        self.s.sendall(json.dumps(obj).encode() + b"\n")

    def line(self):
        while b"\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def reply(self):
        """The next JSON object that is a reply (QMP events are skipped)."""
        while True:
            line = self.line().strip(b"\xff \r")
            if not line:
                continue
            obj = json.loads(line)
            if "event" in obj:
                continue
            return obj


def qmp(path):
    c = Conn(path)
    c.reply()  # greeting
    c.send({"execute": "qmp_capabilities"})
    c.reply()
    return c


def ga(path):
    c = Conn(path)
    sync_id = random.randint(1, 2**31)
    c.send({"execute": "guest-sync-delimited", "arguments": {"id": sync_id}})
    # Discard everything up to the 0xff the agent sends before the sync reply.
    while True:
        while b"\xff" not in c.buf:
            chunk = c.s.recv(65536)
            if not chunk:
                raise EOFError("guest agent closed the connection")
            c.buf += chunk
        c.buf = c.buf.split(b"\xff", 1)[1]
        r = c.reply()
        if r.get("return") == sync_id:
            return c


def call(c, cmd):
    c.send(cmd)
    r = c.reply()
    if "error" in r:
        raise RuntimeError(f"{cmd['execute']}: {r['error']}")
    return r


KEYS = {
    " ": "spc", "-": "minus", "=": "equal", "/": "slash", ".": "dot", ",": "comma",
    ";": "semicolon", "'": "apostrophe", "\\": "backslash", "[": "bracket_left",
    "]": "bracket_right", "`": "grave_accent",
}
SHIFTED = {
    ":": "semicolon", "_": "minus", "+": "equal", "?": "slash", '"': "apostrophe",
    "~": "grave_accent", "!": "1", "@": "2", "#": "3", "$": "4", "%": "5", "^": "6",
    "&": "7", "*": "8", "(": "9", ")": "0", "<": "comma", ">": "dot", "|": "backslash",
    "{": "bracket_left", "}": "bracket_right",
}


def keys(c, text):
    i = 0
    while i < len(text):
        specials = {"<esc>": "esc", "<enter>": "ret", "<tab>": "tab", "<wait>": None}
        for name, code in specials.items():
            if text.startswith(name, i):
                i += len(name)
                if code is None:
                    time.sleep(1)
                else:
                    press(c, [code])
                break
        else:
            ch = text[i]
            i += 1
            if ch.isalpha() or ch.isdigit():
                press(c, (["shift"] if ch.isupper() else []) + [ch.lower()])
            elif ch in KEYS:
                press(c, [KEYS[ch]])
            elif ch in SHIFTED:
                press(c, ["shift", SHIFTED[ch]])
            else:
                raise ValueError(f"no key for {ch!r}")


def press(c, codes):
    call(c, {"execute": "send-key", "arguments": {
        "keys": [{"type": "qcode", "data": k} for k in codes], "hold-time": 20}})
    time.sleep(0.05)  # Packer's default boot_keygroup_interval is 100 ms; BIOS buffers 15 keys


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    mode, path, args = argv[1], argv[2], argv[3:]
    if mode == "qmp":
        c = qmp(path)
        for a in args:
            print(json.dumps(call(c, json.loads(a))))
    elif mode == "keys":
        keys(qmp(path), " ".join(args))
    elif mode == "ga":
        c = ga(path)
        for a in args:
            cmd = json.loads(a)
            if cmd["execute"] in NO_REPLY:
                c.send(cmd)
                time.sleep(0.2)
            else:
                print(json.dumps(call(c, cmd)))
    elif mode == "ga-cat":
        c = ga(path)
        h = call(c, {"execute": "guest-file-open", "arguments": {"path": args[0], "mode": "r"}})["return"]
        data = b""
        while True:
            r = call(c, {"execute": "guest-file-read", "arguments": {"handle": h, "count": 65536}})["return"]
            data += base64.b64decode(r.get("buf-b64", ""))
            if r.get("eof") or not r.get("count"):
                break
        call(c, {"execute": "guest-file-close", "arguments": {"handle": h}})
        sys.stdout.write(data.decode())
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except (OSError, EOFError, RuntimeError, ValueError) as e:
        print(f"ctl.py: {e}", file=sys.stderr)
        sys.exit(1)
