"""What runs inside the sandbox, after pivot_root: the replay, the observations, the hazard facts.

Only modules already imported before the sandbox forks can be used here: every
module of this room is imported at the top of replay.py, never lazily.
"""
