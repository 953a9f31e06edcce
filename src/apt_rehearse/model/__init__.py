"""The data every room shares: the transaction, findings and the verdict's policy, settings, errors.
"""
