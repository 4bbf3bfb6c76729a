"""Test set-up: caches go to a temporary folder so a run leaves nothing behind."""

import os
import tempfile

_CACHE = tempfile.mkdtemp(prefix="nnmark-test-home-")
os.environ["HOME"] = _CACHE
os.environ["XDG_CACHE_HOME"] = os.path.join(_CACHE, ".cache")
os.environ["MPLCONFIGDIR"] = os.path.join(_CACHE, "mpl")
os.environ.setdefault("NNMARK_PROGRESS", "0")
