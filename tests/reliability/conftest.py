"""The reliability suite reuses the integration suite's process helpers (``integration_support``) and
the API suite's (``api_support``): their folders go on ``sys.path``, as pytest puts them there for the
tests inside them."""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parents[1]
for _folder in ("integration", "api"):
    if str(_TESTS / _folder) not in sys.path:
        sys.path.append(str(_TESTS / _folder))
