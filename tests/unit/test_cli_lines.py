"""Error lines stay one printable line whatever the user typed."""

from __future__ import annotations

from apt_rehearse.model.errors import one_line


def test_control_characters_are_shown_not_obeyed() -> None:
    assert one_line("unexpected extra argument (\r)") == "unexpected extra argument (\\r)"
    assert one_line("a\nE: forged\x1b[2J") == "a\\nE: forged\\x1b[2J"
    assert one_line("paquet émoji 😀 ok") == "paquet émoji 😀 ok"  # printable text is left alone
    assert "\n" not in one_line("x\u2028y\u0085z")
