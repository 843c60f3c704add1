#!/usr/bin/env bash
# Install (or upgrade) the linewatch edge agent as a systemd service. Idempotent: run it again after a
# `git pull` to upgrade; it never overwrites /etc/linewatch/agent.yaml or credentials.
#
#   sudo systemd/install.sh                 # install, do not start
#   sudo systemd/install.sh --start         # install, enable and (re)start the service
#   systemd/install.sh --dry-run            # print what would be done (no root needed)
#   systemd/install.sh --dry-run --prefix /tmp/root   # stage under a prefix (tests, image builds)
set -euo pipefail

UNIT=linewatch-agent.service
SERVICE_USER=linewatch
PYTHON=${PYTHON:-python3}
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=""
START=0
DRY_RUN=0

usage() {
    cat <<EOF
Usage: $(basename "$0") [--start] [--dry-run] [--prefix DIR] [--src DIR]

  --start       enable the unit and (re)start it (default: install only)
  --dry-run     print the actions without doing them
  --prefix DIR  install under DIR instead of / (staging); skips user creation, ownership and systemctl
  --src DIR     linewatch checkout to install (default: $SRC)

Environment: PYTHON (default python3, >= 3.11); pip honours PIP_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX
for offline installs from a wheel folder.
EOF
}

die() {
    echo "install.sh: $*" >&2
    exit 1
}

# Run a command, or only print it (shell-quoted) in --dry-run mode.
run() {
    if ((DRY_RUN)); then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

note() {
    echo "==> $*"
}

while (($#)); do
    case "$1" in
        --start) START=1 ;;
        --dry-run) DRY_RUN=1 ;;
        --prefix)
            [[ $# -ge 2 ]] || die "--prefix needs a directory"
            PREFIX=${2%/}
            shift
            ;;
        --src)
            [[ $# -ge 2 ]] || die "--src needs a directory"
            SRC=$(cd "$2" && pwd)
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            die "unknown option: $1"
            ;;
    esac
    shift
done

SYSTEM=1 # act on the running system: user, ownership, systemctl
if [[ -n $PREFIX ]]; then
    SYSTEM=0
    [[ $PREFIX == /* ]] || die "--prefix must be an absolute path"
    ((START == 0)) || die "--start cannot be combined with --prefix"
fi

APP=$PREFIX/opt/linewatch
ETC=$PREFIX/etc/linewatch
CREDS=$ETC/credentials
SRV=$PREFIX/srv/linewatch
UNIT_DIR=$PREFIX/etc/systemd/system

[[ -f $SRC/pyproject.toml && -f $SRC/systemd/$UNIT ]] || die "not a linewatch checkout: $SRC"
if ((SYSTEM && !DRY_RUN && EUID != 0)); then
    die "must run as root (or use --dry-run)"
fi
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$PYTHON is older than 3.11"

APP_REAL=$(realpath -m "$APP")
[[ $APP_REAL != "$SRC" ]] || die "run install.sh from a checkout, not from the installed copy in $APP"

# Ownership arguments for install(1); none when staging under a prefix (the user may not exist there).
OWN_ROOT=()
OWN_CONF=()
OWN_SVC=()
if ((SYSTEM)); then
    OWN_ROOT=(-o root -g root)
    OWN_CONF=(-o root -g "$SERVICE_USER")
    OWN_SVC=(-o "$SERVICE_USER" -g "$SERVICE_USER")
fi

note "service user and group: $SERVICE_USER"
if ((SYSTEM)); then
    getent group "$SERVICE_USER" >/dev/null || run groupadd --system "$SERVICE_USER"
    if ! getent passwd "$SERVICE_USER" >/dev/null; then
        run useradd --system --gid "$SERVICE_USER" --home-dir /var/lib/linewatch --no-create-home \
            --shell /usr/sbin/nologin --comment "linewatch edge agent" "$SERVICE_USER"
    fi
    # USB/V4L2 cameras: /dev/video* belong to group video (the unit's DeviceAllow= admits them).
    if getent group video >/dev/null && ! id -nG "$SERVICE_USER" 2>/dev/null | grep -qw video; then
        run usermod --append --groups video "$SERVICE_USER"
    fi
else
    note "skipped (staging under $PREFIX)"
fi

note "application: $APP (from $SRC)"
run install -d -m 0755 "$APP"
# Upgrade in place: drop the previous copy except the venv and model bundles, then copy the checkout.
run find "$APP" -mindepth 1 -maxdepth 1 ! -name .venv ! -name bundles -exec rm -rf -- {} +
if ((DRY_RUN)); then
    echo "+ tar -C $(printf %q "$SRC") -cf - . | tar -C $(printf %q "$APP") -xf -   (without .git, .venv, caches, runs, data)"
else
    tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./runs --exclude=./data --exclude=./build \
        --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache --exclude=.ruff_cache \
        -cf - . | tar -C "$APP" --no-same-owner -xf -
fi
if [[ ! -x $APP/.venv/bin/python ]]; then
    run "$PYTHON" -m venv "$APP/.venv"
fi
run "$APP/.venv/bin/python" -m pip install --quiet --disable-pip-version-check "${APP}[edge]"

note "configuration: $ETC"
run install -d -m 0755 "${OWN_ROOT[@]}" "$ETC"
if [[ -e $ETC/agent.yaml ]]; then
    note "keeping existing $ETC/agent.yaml"
else
    run install -m 0640 "${OWN_CONF[@]}" "$SRC/configs/agent.example.yaml" "$ETC/agent.yaml"
fi
# Credentials: read by systemd (root) through LoadCredential=, never by the service user directly.
# Every file the unit lists must exist; an empty one means "not used".
run install -d -m 0700 "${OWN_ROOT[@]}" "$CREDS"
for cred in mqtt-password s3-secret-key; do
    if [[ ! -e $CREDS/$cred ]]; then
        run install -m 0600 "${OWN_ROOT[@]}" /dev/null "$CREDS/$cred"
    fi
done

note "camera folders: $SRV (group-writable for the camera's upload account: add it to group $SERVICE_USER)"
for dir in "$SRV" "$SRV/incoming" "$SRV/done" "$SRV/quarantine"; do
    run install -d -m 2770 "${OWN_SVC[@]}" "$dir"
done

note "unit: $UNIT_DIR/$UNIT"
run install -d -m 0755 "$UNIT_DIR"
run install -m 0644 "$SRC/systemd/$UNIT" "$UNIT_DIR/$UNIT"

if ((SYSTEM)); then
    run systemctl daemon-reload
    if ((START)); then
        was_active=0
        systemctl is-active --quiet "$UNIT" && was_active=1
        run systemctl enable --now "$UNIT"
        # An upgrade must restart a running agent to load the new code.
        if ((was_active)); then
            run systemctl restart "$UNIT"
        fi
        note "started; follow with: journalctl -u $UNIT -f"
    else
        note "installed; edit $ETC/agent.yaml, then: systemctl enable --now $UNIT"
    fi
fi
note "done"
