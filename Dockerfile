# pvsd's one image, for every service of docker-compose.yml: the servers (pvs1..3), and the farm's
# db (Debian's PostgreSQL), dhcp (dnsmasq, the site's DHCP server) and target (a diskless QEMU VM).
# One image keeps the build to one set of layers; each service picks its program with `command`.
#
# No registry here? `make images` builds debian:bookworm-slim locally with debootstrap first.
ARG BASE=debian:bookworm-slim
FROM ${BASE}

ARG DEBIAN_FRONTEND=noninteractive
# The servers: python3 and iPXE (the bootstrap binaries served over TFTP). db: postgresql.
# dhcp: dnsmasq-base. target: QEMU with its iPXE ROMs, OVMF, iproute2 (the VM's bridge).
# The demo vDisk pvs1 builds on its first start: Debian's kernel, busybox, mke2fs and depmod.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv ca-certificates \
        ipxe \
        postgresql \
        dnsmasq-base \
        qemu-system-x86 ipxe-qemu ovmf iproute2 \
        linux-image-amd64 busybox-static e2fsprogs kmod \
    && rm -rf /var/lib/apt/lists/*

# `make images` copies the host's own CAs (/usr/local/share/ca-certificates: a TLS-inspecting
# proxy's, say) to var/compose-ca/, so that pip trusts what the host trusts. Where there is no
# such folder this copies README.md alone, which is removed.
COPY README.md var/compose-ca* /usr/local/share/ca-certificates/pvsd/
RUN rm /usr/local/share/ca-certificates/pvsd/README.md && update-ca-certificates >/dev/null

COPY pyproject.toml README.md /opt/pvsd/src/
COPY pvsd /opt/pvsd/src/pvsd
RUN python3 -m venv /opt/pvsd/venv \
    && /opt/pvsd/venv/bin/pip install --no-cache-dir --quiet --cert /etc/ssl/certs/ca-certificates.crt \
        /opt/pvsd/src

# The demo vDisk's builder is the tests' guest image builder (tests/support/guest.py).
COPY tests/support /opt/pvsd/src/tests/support
COPY conf/compose /etc/pvsd/compose
COPY conf/compose/pvsd.toml /etc/pvsd/pvsd.toml

ENV PATH=/opt/pvsd/venv/bin:$PATH \
    PVSD_CONFIG=/etc/pvsd/pvsd.toml \
    PYTHONUNBUFFERED=1
WORKDIR /var/lib/pvsd
CMD ["python3", "/etc/pvsd/compose/pvsd-entrypoint.py"]
