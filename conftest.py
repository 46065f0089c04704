"""pytest configuration of the checkout: the docstring examples (``--doctest-modules``).

The test suite's own fixtures live in ``tests/``.
"""

import pytest
from _pytest.doctest import DoctestItem


@pytest.fixture(autouse=True)
def _examples_write_into_a_temporary_folder(request, tmp_path, monkeypatch):
    """A docstring example that writes files (a plot, a Trainer's logs) writes them in tmp_path."""
    if isinstance(request.node, DoctestItem):
        monkeypatch.chdir(tmp_path)
