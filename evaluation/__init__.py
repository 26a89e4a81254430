"""`das.py eval`: word error rate (evaluate.py) after English normalisation (normalize.py)."""
