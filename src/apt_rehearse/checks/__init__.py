"""Observations in, findings out: pure functions of what the rehearsal saw.
"""
