import pytest  # noqa: F401  (sim/ is on sys.path via pyproject's pythonpath)
