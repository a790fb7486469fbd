import signal
import sys

try:
    from .cli import main

    sys.exit(main())
except KeyboardInterrupt:  # Ctrl-C while Python imports the tool: no traceback, the usual exit code
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the exit itself
    print("interrupted", file=sys.stderr)
    sys.exit(130)
