"""What the bench scripts share: free ports, and child processes whose stderr lines are kept with the time
they arrived, so a script can time what a process logs."""
import socket
import subprocess
import threading
import time

BOUND = 20.0  # seconds: no single wait may take longer


def free_port(kind=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Proc:
    """A child whose stderr lines are kept with the monotonic time they arrived."""

    def __init__(self, argv, env=None):
        self.p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self.lines = []
        self.cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stderr:
            with self.cv:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self.cv.notify_all()

    def wait_line(self, pred, after=0.0):
        deadline = time.monotonic() + BOUND
        with self.cv:
            while True:
                for t, line in self.lines:
                    if t >= after and pred(line):
                        return t
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no matching line; last: %s" % self.lines[-5:])
                self.cv.wait(left)

    def kill(self):
        self.p.kill()
        self.p.wait()

    def term(self):
        self.p.terminate()
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()

    stop = term


def wait_port(port):
    deadline = time.monotonic() + BOUND
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError("nothing listens on %d" % port)
