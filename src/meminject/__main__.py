"""``python -m meminject`` = the ``meminject`` command.

Ctrl-C is handled from the first instant: the handler is installed before anything heavy
(torch, optuna, mlflow) is imported, so an interrupt during the imports ends in one line and
status 130, as one at any later moment does.
"""

import os
import sys

from .core import _interrupts

_interrupts.install()
try:
    from .cli import main

    code = main()
except KeyboardInterrupt:
    code = _interrupts.interrupted_exit()
if code == 130:
    # Interrupted, cleanup done. CPython remembers a KeyboardInterrupt that crossed C code run
    # through PyRun_String (pybind11's exec, during `import torch`) and then ends the process
    # by SIGINT (status -2) even though meminject handled it: end with the status it chose.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
