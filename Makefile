# pvsd: `make demo` runs the main job on the embedded defaults, `make test` runs every test.
# Both work on a fresh Debian machine as root: they install what they need.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PVSD   := $(BIN)/pvsd

# Debian packages the tests drive for real (PostgreSQL is started by the tests themselves).
DEBIAN_PACKAGES := postgresql atftp tftp-hpa tftpd-hpa dnsmasq-base curl kea-admin qemu-system-x86 ipxe-qemu ipxe ovmf radvd iproute2 linux-image-amd64 busybox-static nasm e2fsprogs libnbd-bin qemu-utils faketime xorriso isolinux syslinux-common cpio fdisk grub-efi-amd64-bin dosfstools mtools docker.io docker-compose debootstrap

.PHONY: test demo lint typecheck pytest debian-deps clean bench-tftp bench-dhcp bench-stream bench-target bench-login bench-netboot bench-replication images

$(BIN)/python:
	@scripts/install-debian-deps python-venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

debian-deps:
	@scripts/install-debian-deps $(DEBIAN_PACKAGES)

lint: $(VENV)/.installed
	$(BIN)/ruff check pvsd tests bench scripts conf
	$(BIN)/ruff format --check pvsd tests bench scripts conf

typecheck: $(VENV)/.installed
	$(BIN)/mypy

pytest: $(VENV)/.installed debian-deps
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

demo: $(VENV)/.installed
	@scripts/demo.sh

# Benchmarks compare pvsd with its peers on this machine; they print a table and write JSON.
bench-tftp: $(VENV)/.installed debian-deps
	$(BIN)/python bench/tftp.py

bench-dhcp: $(VENV)/.installed debian-deps
	$(BIN)/python bench/dhcp.py

# The vDisk streaming benchmark's peer (qemu-nbd) and its clients (nbdcopy, fio's nbd engine).
BENCH_STREAM_PACKAGES := fio libnbd-bin qemu-utils faketime

bench-stream: $(VENV)/.installed debian-deps
	@scripts/install-debian-deps $(BENCH_STREAM_PACKAGES)
	$(BIN)/python bench/stream.py

# The target agent benchmark: the agent and qemu-nbd read and written by fio's nbd engine,
# and the stall when the serving server is killed.
bench-target: $(VENV)/.installed debian-deps
	@scripts/install-debian-deps $(BENCH_STREAM_PACKAGES)
	$(BIN)/python bench/target.py

# A burst of fresh logins against one pvsd on a throwaway PostgreSQL: the time of one login and
# the store transactions it costs.
bench-login: $(VENV)/.installed debian-deps
	$(BIN)/python bench/login.py

# Diskless network boot against a local-disk boot of the same Linux image (QEMU under TCG, a lab
# of namespaces): the seconds to the OS's first and last lines.
bench-replication: $(VENV)/.installed debian-deps
	@scripts/install-debian-deps rsync
	$(BIN)/python bench/replication.py

bench-netboot: $(VENV)/.installed debian-deps
	$(BIN)/python bench/netboot.py

# The compose farm (docker-compose.yml) on a machine with no image registry: a Docker engine,
# the debian:bookworm-slim base built with debootstrap, and the farm's image.
images:
	@scripts/images.sh

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache .hypothesis
