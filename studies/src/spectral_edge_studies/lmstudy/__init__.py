"""The language-model study (thesis Part VIII): Tests 1–6, the three-phase pattern, a distribution shift,
Muon vs AdamW, and a 135M pretrained model fine-tuned with the monitor at every step.

- :mod:`.recipes`: the runs of each suite as frozen configs;
- :mod:`.train`: one run, and what its run directory holds;
- :mod:`.suite`: the suite, in order and resumable;
- :mod:`.analysis` and :mod:`.summary`: the tests on the finished runs, and ``summary.md``.

Command line: ``spectral-edge reproduce lm --suite smoke|quick|full``.
"""
