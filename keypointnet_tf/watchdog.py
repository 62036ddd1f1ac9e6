"""Kills a process that has not reached a point in time: `python -m keypointnet_tf.watchdog PID SECONDS MESSAGE`.

Multi-worker start-up blocks inside TensorFlow while holding the GIL, so a Python thread cannot time it out. The
starting process runs this module as a child with a pipe on its stdin and closes the pipe once it is past the
blocking call. If the pipe is still open after SECONDS, this prints MESSAGE to stderr and kills PID; when the pipe
closes first (or the parent ends, which closes it too), it exits quietly.
"""

import os
import select
import signal
import sys


def main(argv):
  pid, timeout, message = int(argv[1]), float(argv[2]), argv[3]
  ready, _, _ = select.select([sys.stdin], [], [], timeout)
  if not ready:
    print(message, file=sys.stderr, flush=True)
    os.kill(pid, signal.SIGKILL)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
