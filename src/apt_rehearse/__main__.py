from apt_rehearse.fronts.cli import run

run()
