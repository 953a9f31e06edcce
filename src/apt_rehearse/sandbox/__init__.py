"""The throw-away copy: namespaces, overlays, the booted init, its cgroup, its confinement.

Host side: nothing here runs the tree's code unconfined.
"""
