"""Evaluation: generation (generation.py), answer scoring (scoring.py), reports (report.py) and
`mcckd eval` (command.py)."""
