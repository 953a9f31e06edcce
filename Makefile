# apt-rehearse: every target installs what it needs with apt-get (Debian 12/13).
PYTHON ?= /usr/bin/python3
PYTEST = PYTHONPATH=src $(PYTHON) -m pytest
RUNTIME_DEPS = python3-apt python3-debian python3-click python3-pyelftools python3-seccomp
TEST_DEPS = python3-pytest python3-pyflakes black python3-jsonschema python3-prometheus-client python3-yaml mmdebstrap dpkg-dev gcc libc6-dev btrfs-progs python3-btrfsutil
DEB_DEPS = debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools lintian \
	dh-exec bash-completion

.PHONY: all deps rehearse check lint format unit integration system reliability bench corpus deb clean

all: check

# apt-get update once, then whatever is missing; nothing to do when all is there.
# DEPS: what a target needs (everything by default; `make rehearse` only the
# tool's own dependencies).
DEPS ?= $(RUNTIME_DEPS) $(TEST_DEPS) $(DEB_DEPS)
deps:
	@missing=""; for p in $(DEPS) $(EXTRA_DEPS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing$$missing"; \
	  for try in 1 2 3; do apt-get update -q && break; sleep 10; done; \
	  for try in 1 2 3; do DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing && exit 0; sleep 10; done; \
	  exit 1; \
	fi

# Rehearse this machine's pending dist-upgrade (nothing on the machine changes).
rehearse:
	$(MAKE) --no-print-directory deps DEPS="$(RUNTIME_DEPS)"
	PYTHONPATH=src $(PYTHON) -m apt_rehearse dist-upgrade

# What a rehearsal costs against the real run (issue 7): prints a table, writes
# bench/results.json. About 35 minutes; BENCH_ARGS="--runs 1" for a quick look.
bench: deps
	$(PYTHON) bench/run.py $(BENCH_ARGS)

# The real-world corpus (issue #20): real server stacks, the real bookworm ->
# trixie upgrade booted against the rehearsal's prediction; writes
# bench/corpus.json and the README's table. Not part of check.
# STACKS=postgresql,bind9 for some stacks only; CORPUS_ARGS="--keep DIR" keeps logs.
corpus: deps
	$(PYTHON) bench/corpus.py $(if $(STACKS),--stacks $(STACKS)) $(CORPUS_ARGS)

# Everything CI runs: unit, integration and system tests, then the proof of
# safety (make reliability).
check: deps
	$(MAKE) --no-print-directory lint
	$(PYTEST) -q -p no:cacheprovider tests/unit tests/integration tests/system
	$(MAKE) --no-print-directory reliability

# pyflakes: unused imports and names, undefined names (the code's own linter);
# black (pyproject.toml: 120 columns) checks the layout. The tree is laid out
# by bookworm's black 23; another major version lays some lines out
# differently, so there the layout check says so and stands aside
# (`make format` lays the tree out with black 23).
BLACK_PATHS = src tests bench
lint:
	$(PYTHON) -m pyflakes $(BLACK_PATHS)
	@if black --required-version 23 --version >/dev/null 2>&1; then \
	  black --check --quiet $(BLACK_PATHS) || { echo "lint: not laid out as black lays it out; run 'make format'"; exit 1; }; \
	else echo "lint: black $$(black --version 2>/dev/null | sed -n '1s/^black, //p') is not 23.x: layout not checked"; fi

format:
	black --required-version 23 --quiet $(BLACK_PATHS)

unit:
	$(PYTEST) -q -p no:cacheprovider tests/unit

integration: deps
	$(PYTEST) -q -p no:cacheprovider tests/integration

system: deps
	$(PYTEST) -q -p no:cacheprovider -s tests/system

# Proof of safety (issue #6): tries hard to break "nothing happens to your
# system until you say so" and prints a table (case, tries, held, broken).
# Rehearses this machine's own / too (nothing changes). About 6 minutes.
reliability:
	$(MAKE) --no-print-directory deps EXTRA_DEPS="python3-hypothesis"
	PYTHONPATH=src:tests/reliability $(PYTHON) -m pytest -q -p no:cacheprovider -p rel_suite tests/reliability

# Build the .deb (and the native source package) out of tree, from the files
# git would see (tracked, plus untracked that are not ignored: uncommitted
# work is included, build litter is not), so the working tree stays clean.
# Results go to ./build/; lintian must find no error. The build sees only
# Debian's own tools (a clean environment: no pyenv or virtualenv python).
DEB_ENV = env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$$HOME" LC_ALL=C.UTF-8 TMPDIR="$$tmp" \
	$${DEB_BUILD_OPTIONS:+DEB_BUILD_OPTIONS="$$DEB_BUILD_OPTIONS"}

deb: deps
	@set -e; top=$$(pwd); tmp=$$(mktemp -d /tmp/apt-rehearse-deb.XXXXXX); \
	trap 'rm -rf "$$tmp"' EXIT INT TERM; \
	version=$$(dpkg-parsechangelog -S Version); \
	src="$$tmp/apt-rehearse-$$version"; mkdir "$$src"; \
	if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
	  git ls-files -z --cached --others --exclude-standard \
	    | xargs -0 -r sh -c 'for f; do if [ -e "$$f" ] || [ -L "$$f" ]; then printf "%s\0" "$$f"; fi; done' sh \
	    | tar -c --null --no-recursion -T - -f - | tar -x -C "$$src" -f -; \
	else \
	  tar -c --exclude=./build --exclude=./.pybuild --exclude=./.git --exclude=./.pytest_cache \
	    --exclude='*.egg-info' --exclude=__pycache__ -f - . | tar -x -C "$$src" -f -; \
	fi; \
	(cd "$$src" && $(DEB_ENV) dpkg-buildpackage -us -uc --build=full) >"$$tmp/build.log" 2>&1 \
	  || { tail -n 60 "$$tmp/build.log"; echo "deb: dpkg-buildpackage failed (log above)"; exit 1; }; \
	mkdir -p "$$top/build"; \
	cp "$$tmp"/apt-rehearse_$${version}_all.deb "$$tmp"/apt-rehearse_$${version}.dsc \
	   "$$tmp"/apt-rehearse_$${version}.tar.* "$$tmp"/apt-rehearse_$${version}_*.changes \
	   "$$tmp"/apt-rehearse_$${version}_*.buildinfo "$$top/build/"; \
	cp "$$tmp/build.log" "$$top/build/apt-rehearse_$${version}.build"; \
	echo "deb: built build/apt-rehearse_$${version}_all.deb"; \
	$(DEB_ENV) lintian --fail-on error \
	  "$$top"/build/apt-rehearse_$${version}_*.changes

clean:
	rm -rf build .pybuild src/*.egg-info .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
