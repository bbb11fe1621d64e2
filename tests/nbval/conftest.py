"""nbval re-runs the golden notebooks, each kernel started in tests/nbval/: the project root goes on the kernels'
PYTHONPATH, and the kernels are as quiet as when the golden copies were written (semifinetune.notebooks.QUIET).

Regenerate the golden notebooks (after changing a notebook or what it shows) with ONE command from the project root:

    python -m semifinetune notebooks --profile tiny --run-dir runs/nbval --golden tests/nbval

and check them with:

    pytest --nbval tests/nbval --nbval-sanitize-with tests/nbval/sanitize.cfg
"""

import os
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])


def pytest_configure(config):
    """Only an nbval session changes the environment; the unit tests under tests/ keep theirs."""
    if not (config.option.nbval or config.option.nbval_lax):
        return
    sys.path.insert(0, ROOT)
    from semifinetune.notebooks import QUIET

    os.environ["PYTHONPATH"] = os.pathsep.join([ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
    os.environ.update(QUIET)
