"""Bort on MXNet 1.9.1 + GluonNLP 0.10.0, faithful to the 2020 release."""
