"""Evaluation: generation (generation.py), answer scoring (scoring.py), self-consistency
(voting.py), answering through a server (endpoint.py), the resumable results folder
(results.py), reports (report.py) and `mcckd eval` (command.py)."""
