"""The robustness suite: recorded histories under faults, checked (see test_robustness.py)."""
