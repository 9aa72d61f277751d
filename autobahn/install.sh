#!/usr/bin/env bash
# Install the Autobahn|Testsuite (wstest) into a private cache directory and
# print the path of the `wstest` launcher on stdout.
#
#   autobahn/install.sh            -> prints e.g. /root/.cache/switchboard/autobahn/wstest
#
# Layout of ${SWITCHBOARD_CACHE:-$HOME/.cache/switchboard}/autobahn:
#   python2.7/    Debian bullseye's Python 2.7 (+ libssl1.1, libffi7), unpacked
#                 with `dpkg -x`; nothing is installed system-wide
#   site/         pip --prefix target (site-packages under site/lib/python2.7)
#   python2       shell wrapper: runs the private interpreter with the right env;
#                 python2.7/usr/lib/python2.7/dist-packages/switchboard-autobahn.pth
#                 makes it call site.addsitedir(site/lib/python2.7/site-packages)
#   wstest        the launcher printed at the end
#   install.log   full output of the last install (its tail is shown on failure)
#   .installed    stamp; when it matches RECIPE below, a rerun does nothing
#
# Why this way: Autobahn|Testsuite only runs on Python 2.7, which Debian
# bookworm no longer ships.  Bullseye's packages come from the same mirror,
# fetched with a private apt state (the system apt configuration is untouched).
#
# Environment:
#   SWITCHBOARD_CACHE      cache root (default $HOME/.cache/switchboard)
#   AUTOBAHN_DEBIAN_MIRROR Debian mirror URI (default: the one apt already uses,
#                          from /etc/apt/sources.list.d/debian.sources or sources.list)
#   AUTOBAHN_FORCE=1       reinstall even if the stamp says it is installed
set -euo pipefail

CACHE_ROOT="${SWITCHBOARD_CACHE:-$HOME/.cache/switchboard}"
DEST="$CACHE_ROOT/autobahn"
PYDIR="$DEST/python2.7"
SITE="$DEST/site"
SITE_PACKAGES="$SITE/lib/python2.7/site-packages"
LAUNCHER="$DEST/wstest"
LOG="$DEST/install.log"
STAMP="$DEST/.installed"

# Debian bullseye packages providing a working python2.7 (with ssl/ctypes and
# headers for building C extensions).
DEBS=(python2.7 python2.7-minimal libpython2.7 libpython2.7-minimal
      libpython2.7-stdlib libpython2.7-dev python2.7-dev libssl1.1 libffi7)

# Last pip/setuptools/wheel releases that still run on Python 2.7.
# (autobahntestsuite 25.10.1 itself pins setuptools==44.0.0.)
BOOTSTRAP=(pip==20.3.4 setuptools==44.0.0 wheel==0.37.1)

# The testsuite and its pinned dependency set.
PACKAGES=(autobahntestsuite==25.10.1
          txaio==2.1.0 incremental==16.10.1 pyOpenSSL==19.1.0
          cryptography==3.3.2 Twisted==19.10.0 zope.interface==4.6.0
          jinja2==2.11.3 markupsafe==1.1.1 Werkzeug==1.0.1 klein==17.10.0
          service_identity==18.1.0 unittest2==1.1.0 six==1.16.0
          'autobahn[accelerate,twisted]==0.10.9')

# Changing any of the lists above changes the recipe and triggers a reinstall.
RECIPE="v1 ${DEBS[*]} | ${BOOTSTRAP[*]} | ${PACKAGES[*]}"

# Fast path: already installed with this recipe.
if [[ "${AUTOBAHN_FORCE:-0}" != 1 && -x "$LAUNCHER" && -f "$STAMP" \
      && "$(cat "$STAMP")" == "$RECIPE" ]]; then
  echo "$LAUNCHER"
  exit 0
fi

mkdir -p "$DEST"

# Serialise concurrent installs (e.g. server.sh and client.sh started together).
exec 9>"$DEST/.lock"
flock 9
# Another process may have finished the install while we waited for the lock.
if [[ "${AUTOBAHN_FORCE:-0}" != 1 && -x "$LAUNCHER" && -f "$STAMP" \
      && "$(cat "$STAMP")" == "$RECIPE" ]]; then
  echo "$LAUNCHER"
  exit 0
fi

WORK="$(mktemp -d -t switchboard-autobahn-install.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

: >"$LOG"
log() { echo "autobahn/install.sh: $*" >&2; echo "=== $*" >>"$LOG"; }

# Run a step with all its output going to the log; on failure, show the tail
# of the log and stop.
step() {
  local what="$1"; shift
  log "$what"
  if ! "$@" >>"$LOG" 2>&1; then
    echo "autobahn/install.sh: FAILED: $what (last lines of $LOG follow)" >&2
    tail -n 40 "$LOG" >&2
    exit 1
  fi
}

# --- 1. Python 2.7 from Debian bullseye --------------------------------------

# Mirror URI: the first one apt already uses for Debian's main archive.
mirror_uri() {
  if [[ -n "${AUTOBAHN_DEBIAN_MIRROR:-}" ]]; then
    echo "$AUTOBAHN_DEBIAN_MIRROR"; return
  fi
  local uri=""
  if [[ -r /etc/apt/sources.list.d/debian.sources ]]; then
    # deb822 format: take the first "URIs:" line not pointing at debian-security.
    uri="$(awk 'tolower($1)=="uris:" && $2 !~ /security/ {print $2; exit}' \
             /etc/apt/sources.list.d/debian.sources)"
  fi
  if [[ -z "$uri" && -r /etc/apt/sources.list ]]; then
    # One-line format: "deb [opts] URI suite components".
    uri="$(awk '$1=="deb" {for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\// && $i !~ /security/) {print $i; exit}}' \
             /etc/apt/sources.list)"
  fi
  echo "$uri"
}

MIRROR="$(mirror_uri)"
[[ -n "$MIRROR" ]] || {
  echo "autobahn/install.sh: no Debian mirror found in /etc/apt; set AUTOBAHN_DEBIAN_MIRROR" >&2
  exit 1
}
mkdir -p "$WORK/apt/lists/partial" "$WORK/apt/cache/archives/partial" "$WORK/debs"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR bullseye main" \
  >"$WORK/apt/sources.list"

# Private apt state: own sources list, lists and cache; no dpkg status and no
# system preferences, so nothing of the system's apt setup is read or changed
# apart from apt.conf (proxy settings etc.).  The sandbox user is root because
# the _apt user cannot write into our mktemp dir.
APT_OPTS=(
  -q
  -oDir::Etc::SourceList="$WORK/apt/sources.list"
  -oDir::Etc::SourceParts=/dev/null
  -oDir::Etc::Preferences=/dev/null
  -oDir::Etc::PreferencesParts=/dev/null
  -oDir::State::Lists="$WORK/apt/lists"
  -oDir::State::status=/dev/null
  -oDir::Cache="$WORK/apt/cache"
  -oAPT::Sandbox::User=root
  -oAcquire::Languages=none
)

step "apt-get update (bullseye from $MIRROR)" apt-get "${APT_OPTS[@]}" --error-on=any update
# (`step` runs these in an `if`, where set -e does not apply: hence || return.)
download_debs() { (cd "$WORK/debs" && apt-get "${APT_OPTS[@]}" download "${DEBS[@]}") || return 1; }
step "apt-get download ${DEBS[*]}" download_debs

rm -rf "$PYDIR" "$SITE" "$STAMP"
mkdir -p "$PYDIR"
unpack_debs() {
  local deb
  for deb in "$WORK"/debs/*.deb; do
    echo "dpkg -x $deb"
    dpkg -x "$deb" "$PYDIR" || return 1
  done
}
step "unpack into $PYDIR" unpack_debs

# Multiarch library dir (x86_64-linux-gnu on amd64), found from what we unpacked.
LIBPY="$(ls "$PYDIR"/usr/lib/*/libpython2.7.so.1.0 | head -n1)"
LIBDIR="$(dirname "$LIBPY")"

# Wrapper for the private interpreter.  PYTHONPATH and the user site are
# cleared so nothing of the caller's (Python 3) environment leaks in.
cat >"$DEST/python2" <<EOF
#!/usr/bin/env bash
# Generated by autobahn/install.sh: private Debian bullseye Python 2.7.
unset PYTHONPATH PYTHONSTARTUP
export PYTHONNOUSERSITE=1
export PYTHONHOME="$PYDIR/usr"
export LD_LIBRARY_PATH="$LIBDIR\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$PYDIR/usr/bin/python2.7" "\$@"
EOF
chmod +x "$DEST/python2"

# Make the private interpreter see our pip --prefix site-packages, in every
# process it starts too (pip runs setup.py builds in subprocesses).  A .pth
# line starting with "import" is executed at start-up; site.addsitedir (unlike
# PYTHONPATH) also processes the .pth files inside site-packages, which the
# zope namespace package needs.
DIST_PACKAGES="$PYDIR/usr/lib/python2.7/dist-packages"
mkdir -p "$DIST_PACKAGES"
echo "import site; site.addsitedir('$SITE_PACKAGES')" >"$DIST_PACKAGES/switchboard-autobahn.pth"
step "check python2.7 (ssl, ctypes)" "$DEST/python2" -c 'import ssl, ctypes, zlib, hashlib'

# --- 2. pip / setuptools / wheel for Python 2.7 ------------------------------

# pip settings for all pip runs below (quiet, no version nag, no Python 2
# deprecation banner on every call).
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_WARN_SCRIPT_LOCATION=1 \
       PIP_NO_PYTHON_VERSION_WARNING=1 PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off

# bullseye's python2.7 has no ensurepip: fetch py2-compatible wheels with the
# system python3's pip, then run pip straight out of its wheel to install them.
step "download ${BOOTSTRAP[*]}" \
  python3 -m pip download --disable-pip-version-check --no-deps \
    --python-version 2.7 --only-binary=:all: --dest "$WORK/wheels" "${BOOTSTRAP[@]}"
PIP_WHL="$(ls "$WORK"/wheels/pip-*.whl)"

step "install ${BOOTSTRAP[*]}" \
  "$DEST/python2" "$PIP_WHL/pip" install --no-index --find-links "$WORK/wheels" \
    --prefix "$SITE" "${BOOTSTRAP[@]}"

# --- 3. Autobahn|Testsuite ---------------------------------------------------

# wsaccel (and any other sdist with C code) must find Python.h and the
# multiarch pyconfig.h inside the private prefix.
export CFLAGS="-I$PYDIR/usr/include -I$PYDIR/usr/include/python2.7"
step "pip install ${PACKAGES[*]}" \
  "$DEST/python2" -m pip install --prefix "$SITE" "${PACKAGES[@]}"

# --- 4. Launcher -------------------------------------------------------------

cat >"$LAUNCHER" <<EOF
#!/usr/bin/env bash
# Generated by autobahn/install.sh: Autobahn|Testsuite's wstest.
exec "$DEST/python2" -u -c 'import sys; sys.argv[0] = "wstest"; from autobahntestsuite.wstest import run; sys.exit(run())' "\$@"
EOF
chmod +x "$LAUNCHER"

step "check wstest --autobahnversion" "$LAUNCHER" --autobahnversion
step "check accelerators (wsaccel, ujson)" \
  "$DEST/python2" -c 'import wsaccel, ujson, zope.interface, OpenSSL'

echo "$RECIPE" >"$STAMP"
log "installed: $LAUNCHER"
echo "$LAUNCHER"
