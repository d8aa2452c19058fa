#!/bin/sh
# Installs stagewise as systemd services, or removes it: `make install` / `make uninstall`
# run this script (docs/deploy.md, "Installing").
#
#   deploy/install.sh install     the venv and the package, the units, the sysusers.d and
#                                 tmpfiles.d entries, /etc/stagewise/stagewise.env if missing
#   deploy/install.sh uninstall   stops and removes the units, the entries and the venv; keeps
#                                 /etc/stagewise, the stagewise user and PREFIX
#
# Settings, from the environment (the Makefile passes its variables of the same names):
#   PREFIX=/opt/stagewise   the units' working directory (app packages placed there are importable)
#   VENV=$PREFIX/venv       the virtualenv the units run (/bin/stagewise in it)
#   WHEEL=                  a wheel (or any pip requirement) to install instead of this checkout
#   PYTHON=python3          the interpreter the venv is made with (3.11 or later)
#   PIP_ARGS=               more pip arguments: an index, --no-index --find-links DIR, ...
#   DESTDIR=                stage the files under this directory only: no venv is built (a venv
#                           is not relocatable) and no systemd tool is run
#   UNITDIR=/etc/systemd/system  SYSUSERSDIR=/usr/lib/sysusers.d  TMPFILESDIR=/usr/lib/tmpfiles.d
#
# Running it again is safe: the venv is reused and the package upgraded, the units and entries are
# written again (local changes belong in drop-ins: `systemctl edit stagewise-manager`), and an
# existing /etc/stagewise/stagewise.env is left alone.  Services are not restarted: see
# docs/deploy.md, "Upgrading".
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")

PREFIX=${PREFIX:-/opt/stagewise}
VENV=${VENV:-$PREFIX/venv}
WHEEL=${WHEEL:-}
PYTHON=${PYTHON:-python3}
PIP_ARGS=${PIP_ARGS:-}
DESTDIR=${DESTDIR:-}
UNITDIR=${UNITDIR:-/etc/systemd/system}
SYSUSERSDIR=${SYSUSERSDIR:-/usr/lib/sysusers.d}
TMPFILESDIR=${TMPFILESDIR:-/usr/lib/tmpfiles.d}
CONFDIR=/etc/stagewise  # the units name it; not a setting
UNITS="stagewise-manager.service stagewise-executor@.service"

ACTION=${1:-}
say() { printf 'stagewise %s: %s\n' "$ACTION" "$*"; }
die() { printf 'stagewise %s: error: %s\n' "$ACTION" "$*" >&2; exit 1; }

# The paths end up in unit files (ExecStart=, WorkingDirectory=) and in a sed replacement: an
# absolute path without blanks, '%' (a unit specifier) or characters sed would read.
check_path() {
    case $2 in
        /*) ;;
        *) die "$1 must be an absolute path, got '$2'" ;;
    esac
    if printf '%s' "$2" | LC_ALL=C grep -q '[^A-Za-z0-9._/+-]'; then
        die "$1 may hold only letters, digits and . _ - + /, got '$2'"
    fi
}

check_path PREFIX "$PREFIX"
check_path VENV "$VENV"
check_path UNITDIR "$UNITDIR"
check_path SYSUSERSDIR "$SYSUSERSDIR"
check_path TMPFILESDIR "$TMPFILESDIR"
PREFIX=${PREFIX%/}
VENV=${VENV%/}
if [ -z "$PREFIX" ] || [ -z "$VENV" ]; then die "PREFIX and VENV cannot be /"; fi

# systemd is the init system (not merely installed): the test sd_booted() makes.
systemd_running() { [ -d /run/systemd/system ]; }

# A deploy/ file as installed: the default venv and working directory replaced by the
# configured ones.  The venv goes through a placeholder ('@' is in no checked path) so that
# the PREFIX replacement cannot reach into a VENV that starts with /opt/stagewise.
substitute() {
    sed -e "s|/opt/stagewise/venv|@VENV@|g" -e "s|/opt/stagewise|$PREFIX|g" -e "s|@VENV@|$VENV|g" "$1"
}

# install_file MODE SOURCE TARGET [substitute]: writes TARGET through a temporary file in its
# folder, so that a unit is never seen half written.
install_file() {
    mode=$1 src=$2 dst=$3
    mkdir -p "$(dirname "$dst")"
    tmp="$dst.tmp.$$"
    if [ "${4:-}" = substitute ]; then
        substitute "$src" >"$tmp"
    else
        cat "$src" >"$tmp"
    fi
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$dst"
    say "installed $dst"
}

install_units() {
    for unit in $UNITS; do
        dst="$DESTDIR$UNITDIR/$unit"
        mkdir -p "$(dirname "$dst")"
        tmp="$dst.tmp.$$"
        {
            printf '# Installed by deploy/install.sh from deploy/%s (PREFIX=%s, VENV=%s).\n' "$unit" "$PREFIX" "$VENV"
            printf '# Local changes belong in a drop-in (systemctl edit %s): this file is rewritten\n' "$unit"
            printf '# by the next make install.\n'
            substitute "$HERE/$unit"
        } >"$tmp"
        chmod 0644 "$tmp"
        mv -f "$tmp" "$dst"
        say "installed $dst"
    done
}

install_files() {
    install_units
    install_file 0644 "$HERE/sysusers.d/stagewise.conf" "$DESTDIR$SYSUSERSDIR/stagewise.conf"
    install_file 0644 "$HERE/tmpfiles.d/stagewise.conf" "$DESTDIR$TMPFILESDIR/stagewise.conf" substitute
    mkdir -p "$DESTDIR$CONFDIR" "$DESTDIR$PREFIX"
    chmod 0755 "$DESTDIR$CONFDIR" "$DESTDIR$PREFIX"
    env_file="$DESTDIR$CONFDIR/stagewise.env"
    if [ -e "$env_file" ]; then
        say "kept $env_file (compare it with deploy/stagewise.env.example for new settings)"
    else
        # 0600 before any secret is written into it: it will hold the Redis password and tokens
        (umask 077 && cat "$HERE/stagewise.env.example" >"$env_file")
        chmod 0600 "$env_file"
        say "installed $env_file: edit it (Redis URL, tokens), it is read by every unit"
    fi
}

python_ok() {
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

# The package, from a wheel or from this checkout.  A checkout is copied and built into a
# wheel in a temporary folder: pip builds a local folder in place, which would leave build/
# and *.egg-info (owned by root) in the checkout.
install_venv() {
    if [ -x "$VENV/bin/python" ]; then
        python_ok "$VENV/bin/python" || die "$VENV holds a Python older than 3.11: remove it first"
        say "reusing the venv $VENV"
    else
        command -v "$PYTHON" >/dev/null 2>&1 || die "no $PYTHON: set PYTHON=/path/to/python3.11 or later"
        python_ok "$PYTHON" || die "$PYTHON is older than 3.11: set PYTHON=/path/to/python3.11 or later"
        # the venv links to this interpreter, which the units then run as the stagewise user
        py=$(command -v "$PYTHON")
        if id stagewise >/dev/null 2>&1 && command -v runuser >/dev/null 2>&1 &&
            ! (cd / && runuser -u stagewise -- "$py" -c pass >/dev/null 2>&1); then
            die "the stagewise user cannot run $py ($(readlink -f "$py")): set PYTHON= to a Python every user can run, e.g. PYTHON=/usr/bin/python3"
        fi
        say "creating the venv $VENV with $PYTHON"
        "$PYTHON" -m venv "$VENV"
    fi
    if [ -n "$WHEEL" ]; then
        src=$WHEEL
        case $src in
            */* | *.whl) [ -e "$src" ] || die "WHEEL=$src: no such file" ;;
        esac
    else
        work=$(mktemp -d)
        trap 'rm -rf "$work"' EXIT
        mkdir "$work/src" "$work/dist"
        (cd "$ROOT" && tar -cf - --exclude=./.git --exclude=./.venv --exclude=./build \
            --exclude=./run --exclude=./dist --exclude='*.egg-info' --exclude=__pycache__ .) |
            (cd "$work/src" && tar -xf -)
        say "building a wheel of this checkout"
        # shellcheck disable=SC2086 # PIP_ARGS is a list of arguments
        "$VENV/bin/python" -m pip wheel --quiet --disable-pip-version-check $PIP_ARGS --no-deps \
            --wheel-dir "$work/dist" "$work/src"
        src=$(ls "$work/dist"/stagewise-*.whl)
    fi
    say "installing stagewise from ${WHEEL:-this checkout} into $VENV"
    # The package with its dependencies, then this very build of it again: pip leaves an
    # installed version alone when the wheel has the same version number (a rebuilt wheel, a
    # rollback to a build of the same version).
    # shellcheck disable=SC2086 # PIP_ARGS is a list of arguments
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $PIP_ARGS --upgrade "$src"
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $PIP_ARGS --no-deps \
        --force-reinstall "$src"
    say "stagewise $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("stagewise"))') in $VENV"
}

# The units run the venv as the stagewise user: every folder on the way to it and to the
# interpreter it links to must be open to that user (a Python under /root, as pyenv installs
# it for root, is not).
check_runnable() {
    if ! id stagewise >/dev/null 2>&1 || ! command -v runuser >/dev/null 2>&1; then
        say "not checked that the stagewise user can run $VENV/bin/stagewise (no such user, or no runuser)"
        return
    fi
    if ! out=$(cd / && runuser -u stagewise -- "$VENV/bin/stagewise" --help 2>&1); then
        printf '%s\n' "$out" | tail -n 3 >&2
        die "the stagewise user cannot run $VENV/bin/stagewise; if that is 'Permission denied', its interpreter $(readlink -f "$VENV/bin/python") or a folder on the way is closed to other users: remove $VENV and make it again with a Python that every user can run, e.g. PYTHON=/usr/bin/python3"
    fi
    say "the stagewise user can run $VENV/bin/stagewise"
}

activate() {
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers "$SYSUSERSDIR/stagewise.conf"
        say "system user stagewise present (systemd-sysusers)"
    else
        say "no systemd-sysusers: create the system user 'stagewise' yourself"
    fi
    if command -v systemd-tmpfiles >/dev/null 2>&1; then
        systemd-tmpfiles --create "$TMPFILESDIR/stagewise.conf"
        say "directories $CONFDIR and $PREFIX in place (systemd-tmpfiles)"
    else
        say "no systemd-tmpfiles: $CONFDIR and $PREFIX were created by this script"
    fi
}

daemon_reload() {
    if systemd_running; then
        systemctl daemon-reload
        say "systemctl daemon-reload done"
    else
        say "systemd is not running here: no daemon-reload"
    fi
}

do_install() {
    if [ -n "$DESTDIR" ]; then
        install_files
        say "staged under $DESTDIR: no venv built, no systemd tool run"
        return
    fi
    [ "$(id -u)" = 0 ] || die "run as root (or set DESTDIR= to stage the files)"
    umask 022  # the venv and the units readable by the stagewise user
    install_files
    activate
    install_venv
    check_runnable
    daemon_reload
    cat <<EOF
stagewise install: next steps
  edit $CONFDIR/stagewise.env (STAGEWISE_REDIS_URL, STAGEWISE_API_TOKENS, ...)
  for each app:  printf 'STAGEWISE_APP=apps.billing:app\nSTAGEWISE_CONCURRENCY=16\n' > $CONFDIR/executor-billing.env
  systemctl enable --now stagewise-manager stagewise-executor@billing
EOF
}

remove() {
    if [ -e "$1" ] || [ -L "$1" ]; then
        rm -f "$1"
        say "removed $1"
    fi
}

do_uninstall() {
    if [ -z "$DESTDIR" ]; then
        [ "$(id -u)" = 0 ] || die "run as root (or set DESTDIR= for a staged tree)"
        if systemd_running; then
            systemctl stop 'stagewise-executor@*.service' stagewise-manager.service || true
            # every enabled executor instance, found by its link in a .wants folder
            for link in "$UNITDIR"/*.wants/stagewise-executor@*.service "$UNITDIR"/*.wants/stagewise-manager.service; do
                if [ -L "$link" ]; then
                    systemctl disable "$(basename "$link")" || true
                fi
            done
        fi
    fi
    for unit in $UNITS; do
        remove "$DESTDIR$UNITDIR/$unit"
    done
    # links systemctl enable made and nobody disabled (systemd not running, a staged tree)
    for link in "$DESTDIR$UNITDIR"/*.wants/stagewise-executor@*.service "$DESTDIR$UNITDIR"/*.wants/stagewise-manager.service; do
        remove "$link"
    done
    remove "$DESTDIR$SYSUSERSDIR/stagewise.conf"
    remove "$DESTDIR$TMPFILESDIR/stagewise.conf"
    if [ -f "$DESTDIR$VENV/pyvenv.cfg" ]; then
        rm -rf "$DESTDIR$VENV"
        say "removed the venv $DESTDIR$VENV"
    fi
    [ -n "$DESTDIR" ] || daemon_reload
    say "kept $DESTDIR$CONFDIR (settings and secrets), $DESTDIR$PREFIX (your apps) and the stagewise user"
}

case $ACTION in
    install) do_install ;;
    uninstall) do_uninstall ;;
    *) die "usage: $0 install|uninstall" ;;
esac
