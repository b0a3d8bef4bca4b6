"""spectral-edge-studies: the studies of the Spectral Edge Thesis, reproduced with spectral-edge.

The grokking study (thesis §27: ``study/``, its tasks in ``tasks/``, its models in ``models/``) and the
language-model study (Part VIII: ``lmstudy/``, ``text/``, ``pretrained.py``, ``optim.py``), with the
``spectral-edge reproduce`` command that runs them. A distribution of its own beside the library: it uses
only the library's public API, extends the library's demo recipe (:mod:`spectral_edge.demo`), and the
library never imports it.
"""
