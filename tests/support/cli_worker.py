"""A long-lived process that runs many ``nixfly`` command lines in-process, for the property-based CLI test.

Started (by tests/test_cli_fuzz.py) inside a network namespace of its own with nothing in it, so no
command line can reach any host: connections fail at once. Protocol: one JSON request per line on
stdin (``{"argv": [...], "cwd": DIR}``), one JSON answer per line on stdout (``{"rc": N, "err": TEXT}``).
Each command gets /dev/null as stdin and files as stdout/stderr (fd level, so subprocesses and binary
output land there too). Retry backoff sleeps are cut to a millisecond: the property is about what a
command says and its exit status, never about timing, and a thousand examples must fit in a minute.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

_real_sleep = time.sleep


def _short_sleep(seconds: float) -> None:
    _real_sleep(min(seconds, 0.001))


def main() -> int:
    requests = os.fdopen(os.dup(0), "r")
    answers = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    time.sleep = _short_sleep
    from nixfly.cli import main as nixfly_main

    home = os.getcwd()
    for line in requests:
        req = json.loads(line)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            sys.stdout.flush()
            sys.stderr.flush()
            saved = os.dup(1), os.dup(2)
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            try:
                os.chdir(req["cwd"])
                rc: object = nixfly_main(list(req["argv"]))
            except SystemExit as e:  # click's --help/--version paths and the like
                rc = e.code if isinstance(e.code, int) else 1
            except BaseException as e:  # what escapes main() is exactly what the test looks for
                import traceback

                sys.stderr.write("ESCAPED main(): " + "".join(traceback.format_exception(e)))
                rc = -1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                os.close(saved[0])
                os.close(saved[1])
                os.chdir(home)
            err.seek(0)
            text = err.read().decode(errors="replace")
        answers.write(json.dumps({"rc": rc if isinstance(rc, int) else repr(rc), "err": text[-4000:]}) + "\n")
        answers.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
