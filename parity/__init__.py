"""Parity suite: proves bort_gluon and bort_torch compute the same thing."""
