# apt-rehearse: every target installs what it needs with apt-get (Debian 12/13).
PYTHON ?= /usr/bin/python3
PYTEST = PYTHONPATH=src $(PYTHON) -m pytest
RUNTIME_DEPS = python3-apt python3-debian python3-click
TEST_DEPS = python3-pytest mmdebstrap dpkg-dev
DEB_DEPS = debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools lintian

.PHONY: all deps rehearse check unit integration system deb clean

all: check

# apt-get update once, then whatever is missing; nothing to do when all is there.
deps:
	@missing=""; for p in $(RUNTIME_DEPS) $(TEST_DEPS) $(DEB_DEPS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing$$missing"; \
	  for try in 1 2 3; do apt-get update -q && break; sleep 10; done; \
	  for try in 1 2 3; do DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing && exit 0; sleep 10; done; \
	  exit 1; \
	fi

# Rehearse this machine's pending dist-upgrade (nothing on the machine changes).
rehearse: deps
	PYTHONPATH=src $(PYTHON) -m apt_rehearse dist-upgrade

check: deps
	$(PYTEST) -q -p no:cacheprovider tests/unit tests/integration tests/system

unit:
	$(PYTEST) -q -p no:cacheprovider tests/unit

integration: deps
	$(PYTEST) -q -p no:cacheprovider tests/integration

system: deps
	$(PYTEST) -q -p no:cacheprovider -s tests/system

clean:
	rm -rf build .pybuild src/*.egg-info .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
