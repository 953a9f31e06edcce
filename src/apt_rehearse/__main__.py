from apt_rehearse.cli import run

run()
