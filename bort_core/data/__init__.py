"""Text-side data, identical for both frameworks (numpy out).

pretraining  text -> masked-LM instances -> `part-%03d.npz` shards (the 2020 format)
demo         the embedded corpus, BPE vocabulary and demo tasks (derived from stdlib docstrings)
"""
