import os
import signal
import sys

if sys.argv[1:2] == ["worker"]:
    # a worker holds nothing until it has joined: SIGTERM while it starts is a clean exit
    # (the worker's own handler takes over once its event loop runs)
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))

from tally.cli import main  # after the handler: importing takes a while

sys.exit(main())
