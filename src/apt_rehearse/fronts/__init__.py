"""The CLI and the apt hook: thin fronts over rehearse.py, and the progress they show.
"""
