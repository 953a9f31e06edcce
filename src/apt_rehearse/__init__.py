"""apt-rehearse: rehearse an apt transaction on a throw-away copy of the system."""

__version__ = "0.1.0"
