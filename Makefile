# memballoon: `make report` measures and publishes, `make test` tests. Both install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ARCH := $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
# Debian packages: QEMU, libvirt's QEMU driver (and the libvirt-qemu user it expects), what
# libvirt-python builds with, a kernel for the probe guest, a static busybox, and sshd for the
# Fabric tests; mmdebstrap and mkfs.ext4 build disk images (the nested Xen host's dom0, full-system
# guests), qemu-img makes the full-system guests' throwaway overlays.
DEB_PACKAGES := qemu-system-x86 libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients libvirt-dev \
	pkg-config gcc python3-venv linux-image-$(ARCH) busybox-static openssh-server openssh-client \
	mmdebstrap e2fsprogs qemu-utils
STAMP := $(VENV)/.installed

.PHONY: all deps install test test-unit test-integration report sweep build site serve status \
	bench-sweep bench-build bench-compare fuzz clean

all: report

deps:
	@bash scripts/deps.sh $(DEB_PACKAGES)

# Reinstalls only when pyproject.toml changes (the stamp holds its hash).
install: deps
	@want=$$(sha256sum pyproject.toml | cut -c1-64); \
	if [ -x $(PY) ] && [ -f $(STAMP) ] && [ "$$(cat $(STAMP))" = "$$want" ]; then exit 0; fi; \
	echo "== python: $(VENV) with the project and its dependencies"; \
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV); \
	$(PY) -m pip install -q --upgrade pip && \
	$(PY) -m pip install -q -e '.[test,site]' && echo "$$want" > $(STAMP)

test: install
	$(PY) -m pytest -q -ra tests

test-unit: install
	$(PY) -m pytest -q -ra -m "not integration and not ssh" tests

test-integration: install
	$(PY) -m pytest -q -ra -m "integration or ssh" tests

# Generated bad manifests and records through validate, status and build (also part of make test).
fuzz: install
	$(PY) -m pytest -q -ra -s -m fuzz tests

report: install
	$(PY) -m generator report

sweep: install
	$(PY) -m generator sweep

build: install
	$(PY) -m generator build

status: install
	$(PY) -m generator status

site: build
	$(VENV)/bin/hugo --source site --minify

serve: build
	$(VENV)/bin/hugo server --source site --bind 127.0.0.1

bench-sweep: install
	$(PY) bench/bench_sweep.py

bench-build: install
	$(PY) bench/bench_build.py

bench-compare: install
	$(PY) bench/bench_compare.py

clean:
	rm -rf site/public site/resources .pytest_cache
