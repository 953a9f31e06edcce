"""From a request (the CLI's words, apt's hook stream, unattended-upgrades' set) to a Transaction.
"""
