"""What will retraining cost? Fits measured retraining runs (run records carrying the
PreIndex of the shift each retrained for) and predicts energy, epochs and emissions for a
new shift's index. The command is `carbon-exporter estimate-retraining` (cli.py here); the
maths is in fit.py; the index itself in exporter.preindex.
"""
