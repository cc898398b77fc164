import os
import signal
import sys

if sys.argv[1:2] == ["worker"]:
    # a worker holds nothing until it has joined: SIGTERM while it starts is a clean exit
    # (the worker's own handler takes over once its event loop runs)
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))

from tally.cli import main  # after the handler: importing takes a while

code = main()
# Done: every file is written and closed, every process waited for. What is left is the
# interpreter's teardown of Arrow, DuckDB and their threads, a tenth of a second or more
# that nobody waits for: flush what is buffered and leave at once.
import logging  # noqa: E402

logging.shutdown()
try:
    sys.stdout.flush()
    sys.stderr.flush()
except (OSError, ValueError):
    code = code or 1
os._exit(code)
