"""Experiments built on spectral-edge: tasks, small models and training recipes (the grokking demo).

Nothing in the library core imports from here; these modules only consume it.
"""
