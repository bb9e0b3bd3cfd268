"""`mcckd demo`: MCC-KD against plain CE on a synthetic task, end to end on a CPU."""
