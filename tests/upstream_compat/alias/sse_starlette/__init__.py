"""``sse_starlette``, answered by ``ssesup.compat``: sse-starlette's published tests run against ssesup
through this package (tests/test_compat_upstream.py puts its folder first on ``sys.path``).

``sse_starlette.sse`` and ``sse_starlette.event`` are ssesup's modules themselves, not copies of their
names, so that what a test patches on them is what the responses under test read.
"""

import sys

import ssesup.compat
import ssesup.compat.event
import ssesup.compat.sse
from ssesup.compat import *  # noqa: F403
from ssesup.compat import __all__  # noqa: F401

sys.modules[f"{__name__}.sse"] = sse = ssesup.compat.sse
sys.modules[f"{__name__}.event"] = event = ssesup.compat.event
