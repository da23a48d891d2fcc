# nooelint: oelint.var.mandatoryvar.HOMEPAGE
# (The project has no public web page yet: no HOMEPAGE rather than a made-up one.)

SUMMARY = "Tether edge runtime: a board's one outbound link to tether-hub"
DESCRIPTION = "tether-edge keeps one outbound, TLS-protected, MQTT-framed link \
               from an edge board to tether-hub and serves the node's Kubernetes \
               API on loopback, answering from a bounded SQLite cache while the \
               cloud is away."
SECTION = "net"
# Tether itself is Apache-2.0; the crates linked into the binary add MIT,
# ISC (ring, rustls-webpki, untrusted), BSD-3-Clause (subtle), Zlib
# (foldhash) and the public-domain SQLite that rusqlite bundles (read from
# `cargo metadata` for tether-edge's dependency tree; recheck when
# Cargo.lock changes).
LICENSE = "Apache-2.0 & MIT & ISC & BSD-3-Clause & Zlib & PD"
# The repository has no license file of its own (Cargo.toml names the
# licence), so the common Apache-2.0 text stands for it.
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

# Keep in step with [workspace.package] version in Cargo.toml (scripts/check
# compares them).
PV = "0.1.0+git"

# The source: the Tether repository, which has no public URL this layer
# could name. Either set TETHER_GIT_URI (a git:// SRC_URI entry, with
# protocol= and branch=) and SRCREV:pn-tether-edge, or build the checkout
# this layer sits in with externalsrc (see README.md). Without either the
# recipe is skipped, saying so.
TETHER_GIT_URI ??= ""
# The checkout this layer sits in (the layer is its yocto-layer/), for
# EXTERNALSRC:pn-tether-edge = "${TETHER_CHECKOUT}" in local.conf.
TETHER_CHECKOUT := "${@os.path.abspath(os.path.join(d.getVar('THISDIR'), '..', '..', '..'))}"
SRC_URI = "${TETHER_GIT_URI}"
require tether-edge-crates.inc
SRC_URI += "\
    file://tether-edge.service \
    file://board-memory-max \
"
# Since whinlatter git unpacks to ${UNPACKDIR}/${BB_GIT_DEFAULT_DESTSUFFIX},
# which is ${BP}: the default S, so S is not set here.

inherit cargo cargo-update-recipe-crates systemd features_check

REQUIRED_DISTRO_FEATURES = "systemd"

# The workspace holds the hub and the tests too; only the edge goes on a board.
CARGO_BUILD_FLAGS += "-p tether-edge"
# The release profile strips; bitbake strips and splits debug info itself,
# and its already-stripped QA check fails on a stripped binary.
CARGO_BUILD_FLAGS += "--config profile.release.strip=false"

# The board: a file name of board-configs/boards/ without .toml. It picks
# /etc/tether/edge.toml and the service's MemoryMax=. Set TETHER_BOARD in
# local.conf to choose; otherwise the first MACHINEOVERRIDES entry, most
# specific first, found in TETHER_MACHINE_BOARDS (MACHINE:board pairs; append
# your own machines) gives it. meta-freescale has no UDOO machines, so the
# i.MX6 boards go by the SoC override an i.MX6 machine sets itself
# (MACHINEOVERRIDES =. "mx6:mx6q:"): UDOO Quad is an i.MX6Q, Dual an
# i.MX6DL, Neo an i.MX6SX.
TETHER_MACHINE_BOARDS ?= "\
    raspberrypi:rpi-1 \
    raspberrypi0:rpi-zero-w \
    raspberrypi0-wifi:rpi-zero-w \
    raspberrypi0-2w:rpi-zero-2-w \
    raspberrypi0-2w-64:rpi-zero-2-w \
    raspberrypi2:rpi-2 \
    raspberrypi3:rpi-3-32 \
    raspberrypi3-64:rpi-3 \
    raspberrypi4:rpi-4 \
    raspberrypi4-64:rpi-4 \
    raspberrypi5:rpi-5 \
    mx6q:udoo-quad \
    mx6dl:udoo-dual \
    mx6sx:udoo-neo \
    genericx86-64:udoo-x86-ii \
    intel-corei7-64:udoo-x86-ii \
"
TETHER_BOARD ?= "${@tether_machine_board(d)}"

def tether_machine_board(d):
    boards = dict(pair.split(':', 1) for pair in (d.getVar('TETHER_MACHINE_BOARDS') or '').split())
    for override in reversed((d.getVar('MACHINEOVERRIDES') or '').split(':')):
        if override in boards:
            return boards[override]
    return ''

# Skipped at parse time, naming what is missing, rather than failing after
# its dependencies have built (SKIP_RECIPE is read by base.bbclass).
SKIP_RECIPE[tether-edge] ?= "${@tether_skip_reason(d)}"

def tether_skip_reason(d):
    if not d.getVar('TETHER_GIT_URI') and not d.getVar('EXTERNALSRC'):
        return ('no source: set TETHER_GIT_URI and SRCREV:pn-tether-edge, or '
                'EXTERNALSRC:pn-tether-edge with INHERIT += "externalsrc" (see meta-tether README.md)')
    if not d.getVar('TETHER_BOARD'):
        return ('no board for MACHINE %s: set TETHER_BOARD to a file name of '
                'board-configs/boards/ without .toml' % d.getVar('MACHINE'))
    return ''

# The config and the unit's memory limit differ per board.
PACKAGE_ARCH = "${MACHINE_ARCH}"

do_install() {
    install -d ${D}${bindir}
    install -m 0755 ${B}/target/${CARGO_TARGET_SUBDIR}/tether-edge ${D}${bindir}/tether-edge

    boards=${S}/board-configs/boards
    board_file=$boards/${TETHER_BOARD}.toml
    if [ ! -f "$board_file" ]; then
        bbfatal "TETHER_BOARD = \"${TETHER_BOARD}\": there is no $board_file; boards: $(ls $boards 2>/dev/null | sed -n 's/\.toml$//p' | tr '\n' ' ')"
    fi
    memory_max=$(sh ${UNPACKDIR}/board-memory-max "$board_file") || bbfatal "$board_file: no usable [board] memory_max"

    install -d ${D}${systemd_system_unitdir}
    sed "s/^MemoryMax=.*/MemoryMax=$memory_max/" ${UNPACKDIR}/tether-edge.service \
        > ${D}${systemd_system_unitdir}/tether-edge.service
    chmod 0644 ${D}${systemd_system_unitdir}/tether-edge.service

    # A site's own edge.toml (node name, hub address), added to SRC_URI by a
    # bbappend, replaces the board's.
    config=$board_file
    if [ -f ${UNPACKDIR}/edge.toml ]; then
        config=${UNPACKDIR}/edge.toml
    fi
    install -d ${D}${sysconfdir}/tether
    install -m 0644 "$config" ${D}${sysconfdir}/tether/edge.toml

    # The board's file where `tether-edge join --board MODEL` looks for it.
    install -d ${D}${datadir}/tether/boards
    install -m 0644 "$board_file" ${D}${datadir}/tether/boards/${TETHER_BOARD}.toml
}

SYSTEMD_SERVICE:${PN} = "tether-edge.service"
CONFFILES:${PN} = "${sysconfdir}/tether/edge.toml"
