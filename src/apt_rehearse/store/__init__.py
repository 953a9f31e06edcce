"""What outlives a rehearsal: saved reports, verdicts, .deb hashes, their housekeeping.
"""
