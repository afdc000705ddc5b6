#!/usr/bin/env bash
# microcurrent-kiosk installer for Raspberry Pi OS Bookworm (Debian 12).
#
#   sudo scripts/install.sh                  full system install (unattended, idempotent)
#   scripts/install.sh --render-only OUTDIR  only render the two systemd units and the
#                                            sysusers.d file into OUTDIR
#                                            (no root, no system change; used by the tests)
#   scripts/install.sh --help
#
# Settings come from the environment (NAME=default):
#   MCK_PREFIX=/opt/microcurrent-kiosk            the venv goes to $MCK_PREFIX/venv
#   MCK_HW_USER=mck-hw                            system user of the hardware daemon
#   MCK_KIOSK_USER=mck-kiosk                      system user of the kiosk UI
#   MCK_GROUP=mck                                 shared group: socket + config access
#   MCK_CONFIG_DIR=/etc/microcurrent-kiosk        holds site.yaml (merged over packaged defaults)
#   MCK_SOCKET=/run/microcurrent/hw.sock          daemon socket; its directory must be under /run
#   MCK_STATE_DIR=/var/lib/microcurrent-kiosk     daemon state; must be under /var/lib
#   MCK_KIOSK_STATE_DIR=/var/lib/microcurrent-kiosk-ui   kiosk (Kivy) state; under /var/lib
#   MCK_ENABLE_SPI=1                              1: enable the SPI interface (needs a reboot once)
#   MCK_START=0                                   1: start both units at the end
#   MCK_FORCE=0                                   1: install on something other than Debian 12
#   MCK_SOURCE=<the repository holding this script>   project to pip-install, unit templates
#
# Every failing step (apt, pip, systemctl, ...) stops the script (set -e). Running it again is
# safe: users, groups, the venv, config.txt and site.yaml are only changed when needed, and an
# existing site.yaml is never touched. Running units are not restarted (see docs/deployment.md).
# Python packages come only from requirements/pi.txt: pinned, every file checked against its
# sha256 (pip --require-hashes), built without build isolation (see docs/deployment.md).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

MCK_PREFIX="${MCK_PREFIX:-/opt/microcurrent-kiosk}"
MCK_HW_USER="${MCK_HW_USER:-mck-hw}"
MCK_KIOSK_USER="${MCK_KIOSK_USER:-mck-kiosk}"
MCK_GROUP="${MCK_GROUP:-mck}"
MCK_CONFIG_DIR="${MCK_CONFIG_DIR:-/etc/microcurrent-kiosk}"
MCK_SOCKET="${MCK_SOCKET:-/run/microcurrent/hw.sock}"
MCK_STATE_DIR="${MCK_STATE_DIR:-/var/lib/microcurrent-kiosk}"
MCK_KIOSK_STATE_DIR="${MCK_KIOSK_STATE_DIR:-/var/lib/microcurrent-kiosk-ui}"
MCK_ENABLE_SPI="${MCK_ENABLE_SPI:-1}"
MCK_START="${MCK_START:-0}"
MCK_FORCE="${MCK_FORCE:-0}"
MCK_SOURCE="${MCK_SOURCE:-$(cd "$SCRIPT_DIR/.." && pwd)}"

UNITS=(microcurrent-hw.service microcurrent-kiosk.service)
UNIT_DIR=/etc/systemd/system
# The system users and groups (sysusers.d(5)), rendered like the units.
SYSUSERS=microcurrent-kiosk.sysusers.conf
SYSUSERS_DEST=/etc/sysusers.d/microcurrent-kiosk.conf

# Build tools for the spidev/lgpio wheels when no binary wheel fits (lgpio's sdist runs swig
# and links -llgpio), and the Mesa/DRM runtime Kivy's SDL2 needs for KMS/DRM + GLES.
# --no-install-recommends is used, so the Mesa drivers (libgl1-mesa-dri: vc4/v3d) and the Mesa
# EGL vendor library are listed explicitly.
APT_PACKAGES=(
    python3 python3-venv python3-dev build-essential swig
    libgl1 libgles2 libegl1 libegl-mesa0 libgbm1 libdrm2 libgl1-mesa-dri libmtdev1
)
# Only in the Raspberry Pi OS archive, not in plain Debian 12: added when apt knows it.
APT_OPTIONAL=(liblgpio-dev)

log() { printf 'install.sh: %s\n' "$*"; }
warn() { printf 'install.sh: WARNING: %s\n' "$*" >&2; }
die() {
    printf 'install.sh: ERROR: %s\n' "$*" >&2
    exit 1
}

usage() {
    # The header comment above is the manual.
    sed -n '2,/^set -euo pipefail/{/^set /d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

# --- variables -----------------------------------------------------------------------------

# Values end up in unit files and sed replacements: allow only plain names and paths (no
# spaces, no '%' systemd specifiers, no '@', no '|').
check_path() { # NAME VALUE
    [[ "$2" =~ ^/[A-Za-z0-9._/-]+$ && "$2" != *..* && "$2" != */ ]] ||
        die "$1='$2' must be an absolute path of letters, digits and . _ - / (no trailing /)"
}
check_name() { # NAME VALUE
    [[ "$2" =~ ^[a-z_][a-z0-9_-]{0,30}$ ]] ||
        die "$1='$2' is not a valid user/group name (lower case, digits, _ -)"
}
check_flag() { # NAME VALUE
    [[ "$2" == 0 || "$2" == 1 ]] || die "$1='$2' must be 0 or 1"
}
# systemd's RuntimeDirectory=/StateDirectory= take a path relative to /run or /var/lib.
under() { # NAME VALUE BASE -> prints VALUE relative to BASE
    local rel="${2#"$3"/}"
    [[ "$2" == "$3"/* && -n "$rel" ]] || die "$1='$2' must be below $3/ (systemd creates it there)"
    printf '%s\n' "$rel"
}

check_vars() {
    check_path MCK_PREFIX "$MCK_PREFIX"
    check_path MCK_CONFIG_DIR "$MCK_CONFIG_DIR"
    check_path MCK_SOCKET "$MCK_SOCKET"
    check_path MCK_STATE_DIR "$MCK_STATE_DIR"
    check_path MCK_KIOSK_STATE_DIR "$MCK_KIOSK_STATE_DIR"
    check_path MCK_SOURCE "$MCK_SOURCE"
    check_name MCK_HW_USER "$MCK_HW_USER"
    check_name MCK_KIOSK_USER "$MCK_KIOSK_USER"
    check_name MCK_GROUP "$MCK_GROUP"
    check_flag MCK_ENABLE_SPI "$MCK_ENABLE_SPI"
    check_flag MCK_START "$MCK_START"
    check_flag MCK_FORCE "$MCK_FORCE"
    [[ "$MCK_HW_USER" != "$MCK_KIOSK_USER" ]] || die "MCK_HW_USER and MCK_KIOSK_USER must differ"
    [[ "$MCK_STATE_DIR" != "$MCK_KIOSK_STATE_DIR" ]] ||
        die "MCK_STATE_DIR and MCK_KIOSK_STATE_DIR must differ (systemd chowns each to its user)"
    RUNTIME_DIRECTORY="$(under MCK_SOCKET "$(dirname "$MCK_SOCKET")" /run)"
    STATE_DIRECTORY="$(under MCK_STATE_DIR "$MCK_STATE_DIR" /var/lib)"
    KIOSK_STATE_DIRECTORY="$(under MCK_KIOSK_STATE_DIR "$MCK_KIOSK_STATE_DIR" /var/lib)"
    [[ -d "$MCK_SOURCE/systemd" ]] || die "MCK_SOURCE='$MCK_SOURCE' has no systemd/ templates"
}

# --- rendering (the one code path for --render-only and a real install) --------------------

render() { # TEMPLATE DEST: fill in the @NAME@ placeholders, write DEST atomically (0644)
    local tmpl="$1" dest="$2" tmp left
    [[ -f "$tmpl" ]] || die "template missing: $tmpl"
    mkdir -p "$(dirname "$dest")"
    tmp="$(mktemp "$(dirname "$dest")/.$(basename "$dest").XXXXXX")"
    sed -e "s|@VENV@|$MCK_PREFIX/venv|g" \
        -e "s|@PREFIX@|$MCK_PREFIX|g" \
        -e "s|@HW_USER@|$MCK_HW_USER|g" \
        -e "s|@KIOSK_USER@|$MCK_KIOSK_USER|g" \
        -e "s|@GROUP@|$MCK_GROUP|g" \
        -e "s|@CONFIG@|$MCK_CONFIG_DIR/site.yaml|g" \
        -e "s|@SOCKET@|$MCK_SOCKET|g" \
        -e "s|@RUNTIME_DIRECTORY@|$RUNTIME_DIRECTORY|g" \
        -e "s|@STATE_DIR@|$MCK_STATE_DIR|g" \
        -e "s|@STATE_DIRECTORY@|$STATE_DIRECTORY|g" \
        -e "s|@KIOSK_STATE_DIR@|$MCK_KIOSK_STATE_DIR|g" \
        -e "s|@KIOSK_STATE_DIRECTORY@|$KIOSK_STATE_DIRECTORY|g" \
        "$tmpl" >"$tmp"
    if left="$(grep -noE '@[A-Z_]+@' "$tmp")"; then
        rm -f "$tmp"
        die "$tmpl: unknown template variable(s): ${left//$'\n'/ }"
    fi
    chmod 0644 "$tmp"
    mv -f "$tmp" "$dest"
    log "rendered $dest"
}

render_units() { # OUTDIR
    local unit
    for unit in "${UNITS[@]}"; do
        render "$MCK_SOURCE/systemd/$unit.in" "$1/$unit"
    done
}

# --- system install steps ------------------------------------------------------------------

check_system() {
    if [[ "$EUID" -ne 0 ]]; then
        die "a system install must run as root (try: sudo $0). To only render the units, use: $0 --render-only OUTDIR"
    fi
    command -v systemctl >/dev/null 2>&1 || die "systemctl not found: this installer needs systemd"
    command -v systemd-sysusers >/dev/null 2>&1 || die "systemd-sysusers not found: this installer needs systemd"
    local id="" like="" ver=""
    if [[ -r /etc/os-release ]]; then
        # shellcheck disable=SC1091
        id="$(. /etc/os-release && printf '%s' "${ID:-}")"
        # shellcheck disable=SC1091
        like="$(. /etc/os-release && printf '%s' "${ID_LIKE:-}")"
        # shellcheck disable=SC1091
        ver="$(. /etc/os-release && printf '%s' "${VERSION_ID:-}")"
    fi
    # Raspberry Pi OS 64-bit says ID=debian, 32-bit says ID=raspbian ID_LIKE=debian.
    if [[ ("$id" == debian || " $like " == *" debian "*) && "$ver" == 12 ]]; then
        :
    elif [[ "$MCK_FORCE" == 1 ]]; then
        warn "not Debian 12 (ID=${id:-?} VERSION_ID=${ver:-?}); continuing because MCK_FORCE=1"
    else
        die "this installer targets Raspberry Pi OS Bookworm / Debian 12, found ID=${id:-?} VERSION_ID=${ver:-?}. Set MCK_FORCE=1 to try anyway."
    fi
    [[ -f "$MCK_SOURCE/pyproject.toml" ]] || die "MCK_SOURCE='$MCK_SOURCE' is not the project (no pyproject.toml)"
    [[ -f "$MCK_SOURCE/requirements/pi.txt" && -f "$MCK_SOURCE/requirements/pi-build.txt" ]] ||
        die "MCK_SOURCE='$MCK_SOURCE' has no requirements/pi.txt and pi-build.txt (scripts/lock-pi makes them)"
}

install_packages() {
    local pkgs=("${APT_PACKAGES[@]}") p cand
    export DEBIAN_FRONTEND=noninteractive
    log "apt-get update"
    apt-get update
    for p in "${APT_OPTIONAL[@]}"; do
        cand="$(apt-cache policy "$p" 2>/dev/null | sed -n 's/^ *Candidate: *//p')"
        if [[ -n "$cand" && "$cand" != "(none)" ]]; then
            pkgs+=("$p")
        else
            log "$p is not in the apt sources (fine outside Raspberry Pi OS)"
        fi
    done
    log "apt-get install ${pkgs[*]}"
    apt-get install -y --no-install-recommends "${pkgs[@]}"
}

setup_accounts() {
    local g
    # gpio/spi come with Raspberry Pi OS (its udev rules give them /dev/gpiochip*, /dev/spidev*).
    for g in gpio spi; do
        if ! getent group "$g" >/dev/null; then
            warn "group $g does not exist (not Raspberry Pi OS?): systemd-sysusers creates it; the device nodes need udev rules giving it access"
        fi
    done
    # Users, groups and memberships are declared in one sysusers.d file; systemd-sysusers creates
    # what is missing and keeps what exists (also users an older installer made with useradd).
    render "$MCK_SOURCE/systemd/$SYSUSERS.in" "$SYSUSERS_DEST"
    systemd-sysusers "$SYSUSERS_DEST"
    log "systemd-sysusers $SYSUSERS_DEST: users $MCK_HW_USER and $MCK_KIOSK_USER, group $MCK_GROUP"
}

setup_venv() {
    local venv="$MCK_PREFIX/venv"
    install -d -m 0755 "$MCK_PREFIX"
    if [[ ! -x "$venv/bin/python" ]]; then
        log "creating $venv"
        python3 -m venv "$venv"
    fi
    # Every Python package comes pinned and hashed from requirements/ (scripts/lock-pi makes
    # them): pip refuses any file whose sha256 is not listed, and any requirement not pinned.
    # --no-build-isolation: an sdist (spidev has no aarch64 wheel) is built with the hashed
    # setuptools installed first, not with build tools pip would download unchecked. pip itself
    # stays the one python3-venv ships (Debian's package), for the same reason.
    local req="$MCK_SOURCE/requirements" pip=("$venv/bin/python" -m pip --disable-pip-version-check)
    [[ "$(uname -m)" == aarch64 ]] ||
        warn "requirements/pi.txt is resolved for 64-bit Raspberry Pi OS (aarch64), this is $(uname -m): packages without a wheel here are built from source and may need more build tools"
    log "pip install --require-hashes -r requirements/pi-build.txt, then -r requirements/pi.txt"
    "${pip[@]}" install --require-hashes --no-deps -r "$req/pi-build.txt"
    "${pip[@]}" install --require-hashes --no-build-isolation -r "$req/pi.txt"
    # The project itself, from the checkout (a directory has no hash): its dependencies are all
    # installed above (--no-deps), nothing is fetched (--no-index). Not editable: the appliance
    # runs an installed copy, not the checkout; --force-reinstall picks up a new checkout.
    log "pip install $MCK_SOURCE (no dependencies, no index)"
    "${pip[@]}" install --no-deps --no-build-isolation --no-index --force-reinstall "$MCK_SOURCE"
}

setup_config() {
    local site="$MCK_CONFIG_DIR/site.yaml" tmp
    install -d -m 0750 -o root -g "$MCK_GROUP" "$MCK_CONFIG_DIR"
    if [[ -e "$site" ]]; then
        log "keeping existing $site"
        return
    fi
    tmp="$(mktemp "$MCK_CONFIG_DIR/.site.yaml.XXXXXX")"
    cat >"$tmp" <<'EOF'
# microcurrent-kiosk site configuration.
# Merged over the packaged defaults (hw/default.yaml in the installed package): put only the
# keys that differ on this device here. Every value is still checked against the code's
# ceilings, and unknown keys are errors. A limit may only move in its safer direction from the
# packaged value (lower currents, a shorter lease, ...). The board itself (pins, scale factors)
# is in /etc/microcurrent-kiosk/board.yaml, written by `python -m hw.calibrate`, never here.
# After a change: systemctl restart microcurrent-hw
#
# Example (replace the {} below with it):
# limits:
#   level_max_ua: 300
#
# An empty file is refused as a config error, so "no overrides" is written explicitly:
{}
EOF
    chown "root:$MCK_GROUP" "$tmp"
    chmod 0640 "$tmp"
    mv "$tmp" "$site"
    log "created $site"
}

REBOOT_NEEDED=0

enable_spi() {
    [[ "$MCK_ENABLE_SPI" == 1 ]] || {
        log "MCK_ENABLE_SPI=0: leaving the SPI setting alone"
        return
    }
    if command -v raspi-config >/dev/null 2>&1; then
        log "raspi-config nonint do_spi 0 (enable SPI)"
        raspi-config nonint do_spi 0
    else
        local cfg=""
        for cfg in /boot/firmware/config.txt /boot/config.txt ""; do
            [[ -z "$cfg" || -f "$cfg" ]] && break
        done
        if [[ -z "$cfg" ]]; then
            warn "no raspi-config and no /boot/firmware/config.txt: enable SPI by hand"
            return
        fi
        if grep -qE '^[[:space:]]*dtparam=spi=on[[:space:]]*$' "$cfg"; then
            log "$cfg already has dtparam=spi=on"
        else
            # A trailing conditional section ([pi4], [cm4], ...) would swallow the line: [all].
            printf '\n[all]\n# added by microcurrent-kiosk install.sh\ndtparam=spi=on\n' >>"$cfg"
            log "added dtparam=spi=on to $cfg"
        fi
    fi
    if [[ ! -e /dev/spidev0.0 ]]; then
        REBOOT_NEEDED=1
    fi
}

install_units() {
    render_units "$UNIT_DIR"
    if [[ -d /run/systemd/system ]]; then
        systemctl daemon-reload
    else
        warn "systemd is not running (chroot/image build?): skipping daemon-reload"
    fi
    systemctl enable "${UNITS[@]}"
    # No desktop: a display manager on graphical.target would fight the kiosk for the DRM device.
    systemctl set-default multi-user.target
    if ! grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
        warn "the cgroup memory controller is off: the kiosk's MemoryMax= has no effect (add 'cgroup_enable=memory cgroup_memory=1' to /boot/firmware/cmdline.txt)"
    fi
}

start_units() {
    if [[ "$MCK_START" != 1 ]]; then
        log "MCK_START=0: not starting anything (systemctl start ${UNITS[*]})"
        return
    fi
    if [[ "$REBOOT_NEEDED" == 1 ]]; then
        warn "SPI is not active yet: the daemon's self-test will fail until you reboot"
    fi
    # start, not restart: a second run must not cut a running treatment short.
    systemctl start "${UNITS[@]}"
    log "started ${UNITS[*]} (already running units were left alone)"
}

main_install() {
    check_system
    install_packages
    setup_accounts
    setup_venv
    setup_config
    enable_spi
    install_units
    start_units
    if [[ "$REBOOT_NEEDED" == 1 ]]; then
        log "done. SPI is on in the boot config but /dev/spidev0.0 is not there yet: REBOOT (sudo reboot)."
    else
        log "done."
    fi
}

# --- command line --------------------------------------------------------------------------

case "${1:-}" in
-h | --help)
    usage
    exit 0
    ;;
--render-only)
    [[ $# -eq 2 && -n "$2" ]] || {
        echo "usage: $0 --render-only OUTDIR" >&2
        exit 2
    }
    check_vars
    render_units "$2"
    render "$MCK_SOURCE/systemd/$SYSUSERS.in" "$2/$SYSUSERS"
    ;;
"")
    check_vars
    main_install
    ;;
*)
    echo "install.sh: unknown argument '$1' (see --help)" >&2
    exit 2
    ;;
esac
