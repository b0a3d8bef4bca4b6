"""Repository-level pytest set-up.

Doctests run over ``src/`` and the studies' ``studies/src/`` (pyproject's ``--doctest-modules``).
Modules of the optional integrations import their framework at the top, so they cannot be collected
where that extra is not installed: leave them out there instead of failing the whole collection (their
tests in tests/integrations skip). The same goes for the studies where they are not installed.

Several recipes are deterministic only for a given number of torch threads (their pinned numbers were
measured with torch's default), so no test may leave another thread count behind for the next one.
"""

import importlib.util

import pytest
import torch

_NEEDS = {
    "src/spectral_edge/integrations/huggingface.py": "transformers",
    "src/spectral_edge/integrations/lightning.py": "lightning",
}

collect_ignore = [path for path, package in _NEEDS.items() if importlib.util.find_spec(package) is None]
# The studies are a distribution of their own: where only the library is installed (`pip install -e
# '.[test]'`), their tests and doctests are left out rather than failing the collection.
if importlib.util.find_spec("spectral_edge_studies") is None:
    collect_ignore += ["studies/tests", "studies/src"]


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
