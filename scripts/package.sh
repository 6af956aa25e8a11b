#!/usr/bin/env bash
# Builds the Debian packages of labwire into target/debian/:
#   labwire-agent        the lab daemon, its unit, /etc/labwire/agent.yaml, the device-type
#                        library and LAVA templates (for reading: both are built in)
#   labwire-coordinator  the coordinator, its unit, /etc/labwire/coordinator.yaml
#   labwire-client       the `labwire` command
# docs/install.md says how to install them; tests/e2e/packages.rs installs, upgrades and purges
# them on the test machine.
#
# Usage: scripts/package.sh [--debug] [--bin-dir DIR] [--out DIR] [--version VERSION]
#   --debug        the dev profile instead of release, and fast compression (for tests)
#   --bin-dir DIR  take labwire, labwire-agent and labwire-coordinator from DIR, build nothing
#   --out DIR      write the .deb files here (default: target/debian)
#   --version V    the packages' version (default: the workspace's version in Cargo.toml)
#
# The packages are staged trees packed with dpkg-deb, Debian's own tool, rather than built by
# cargo-deb: we write the maintainer scripts (user, state folder, stat override, purge)
# either way, the rest (control, md5sums, conffiles) is a few lines here, and nothing has
# to be compiled first (`cargo install cargo-deb --locked` took 1 min 28 s on the 2-core
# test machine). Depends comes from dpkg-shlibdeps, as in any Debian package.
# Binaries are stripped of debug info but keep their symbol table, so panics still name
# their functions. The architecture is the build host's (no cross builds).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

profile=release
bin_dir=""
out=""
version=""
while [ $# -gt 0 ]; do
    case "$1" in
    --debug) profile=debug ;;
    --bin-dir) bin_dir="${2:?--bin-dir needs a folder}"; shift ;;
    --out) out="${2:?--out needs a folder}"; shift ;;
    --version) version="${2:?--version needs a version}"; shift ;;
    -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "package.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

for tool in dpkg-deb dpkg-shlibdeps objcopy jq cargo; do
    if ! command -v "$tool" >/dev/null; then
        echo "package.sh: $tool is missing (apt-get install dpkg-dev binutils jq)" >&2
        exit 1
    fi
done

meta="$(cargo metadata --no-deps --format-version 1 --locked)"
field() { jq -r --arg f "$1" '.packages[] | select(.name == "labwire") | .[$f] // empty' <<<"$meta"; }
target_dir="$(jq -r .target_directory <<<"$meta")"
if [ -z "$version" ]; then
    # A Cargo pre-release (1.2.0-rc.1) sorts before its release in Debian as 1.2.0~rc.1.
    version="$(field version)"
    version="${version/-/\~}"
fi
homepage="$(field repository)"
license="$(field license)"
arch="$(dpkg --print-architecture)"
[ -n "$out" ] || out="$target_dir/debian"

if [ -z "$bin_dir" ]; then
    if [ "$profile" = release ]; then
        cargo build --locked --release -p labwire --bins
    else
        cargo build --locked -p labwire --bins
    fi
    bin_dir="$target_dir/$profile"
fi
for b in labwire labwire-agent labwire-coordinator; do
    if [ ! -x "$bin_dir/$b" ]; then
        echo "package.sh: no $bin_dir/$b" >&2
        exit 1
    fi
done

# dpkg-shlibdeps wants a debian/control beside the packages it looks at and the binaries
# under debian/PACKAGE/; the staging trees live there.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/debian" "$out"
touch "$work/debian/control"

# stage PACKAGE: an empty tree with the package's docs folder and copyright.
stage() {
    local root="$work/debian/$1"
    install -d -m 0755 "$root/DEBIAN" "$root/usr/bin" "$root/usr/share/doc/$1"
    cat >"$root/usr/share/doc/$1/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: labwire
Source: $homepage

Files: *
Copyright: the labwire developers
License: $license
 On Debian systems, the full text of this license is in
 /usr/share/common-licenses/$license.
EOF
    chmod 0644 "$root/usr/share/doc/$1/copyright"
}

# binary PACKAGE NAME: the stripped binary NAME in /usr/bin.
binary() {
    objcopy --strip-debug "$bin_dir/$2" "$work/debian/$1/usr/bin/$2"
    chmod 0755 "$work/debian/$1/usr/bin/$2"
}

# put PACKAGE MODE SOURCE DEST: one file.
put() {
    install -D -m "$2" "$3" "$work/debian/$1$4"
}

# scripts PACKAGE CONFFILE PURGE_FILES: the maintainer scripts of a daemon's package.
scripts() {
    local s
    for s in postinst prerm postrm; do
        sed -e "s|@NAME@|$1|g" -e "s|@CONFFILE@|$2|g" -e "s|@PURGE_FILES@|$3|g" \
            "scripts/deb/$s" >"$work/debian/$1/DEBIAN/$s"
        chmod 0755 "$work/debian/$1/DEBIAN/$s"
    done
}

# pack PACKAGE: control, conffiles and md5sums, then the .deb.
pack() {
    local pkg="$1" root="$work/debian/$1" shlibs size b args=()
    for b in "$root"/usr/bin/*; do args+=("-edebian/$pkg/usr/bin/${b##*/}"); done
    shlibs="$(cd "$work" && dpkg-shlibdeps -O "${args[@]}" | sed -n 's/^shlibs:Depends=//p')"
    if [ -z "$shlibs" ]; then
        echo "package.sh: dpkg-shlibdeps found no dependencies for $pkg" >&2
        exit 1
    fi
    size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
    {
        echo "Package: $pkg"
        echo "Version: $version"
        echo "Architecture: $arch"
        echo "Maintainer: labwire developers <labwire@example.invalid>"
        echo "Installed-Size: $size"
        echo "Homepage: $homepage"
        sed -e '/^Package:/d' -e "s|@SHLIBS@|$shlibs|" "scripts/deb/$pkg.control"
    } >"$root/DEBIAN/control"
    # Every file under /etc is a conffile: dpkg keeps the admin's changes on upgrade.
    if [ -d "$root/etc" ]; then
        (cd "$root" && find etc -type f | sort | sed 's|^|/|') >"$root/DEBIAN/conffiles"
    fi
    (cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
        xargs -0 md5sum) >"$root/DEBIAN/md5sums"
    chmod 0644 "$root/DEBIAN/"{control,md5sums}
    if [ "$profile" = debug ]; then
        dpkg-deb --root-owner-group -Zgzip -z1 --build "$root" "$out" >/dev/null
    else
        dpkg-deb --root-owner-group -Zxz --build "$root" "$out" >/dev/null
    fi
    echo "$out/${pkg}_${version}_${arch}.deb"
}

stage labwire-agent
binary labwire-agent labwire-agent
put labwire-agent 0644 systemd/labwire-agent.service /usr/lib/systemd/system/labwire-agent.service
put labwire-agent 0644 config/agent.yaml /etc/labwire/agent.yaml
put labwire-agent 0644 config/agent.yaml /usr/share/doc/labwire-agent/examples/agent.yaml
for f in device-types/*.yaml; do
    put labwire-agent 0644 "$f" "/usr/share/labwire/$f"
done
for f in config/templates/lava/*.jinja2; do
    put labwire-agent 0644 "$f" "/usr/share/labwire/templates/lava/${f##*/}"
done
cat >"$work/readme" <<'EOF'
The device-type library (device-types/) and the LAVA job templates (templates/lava/) of
this version of labwire-agent, for reading and copying: the agent has them built in, so
editing these files changes nothing. To add a device type or replace one by name, put a
file in a folder named in `device_type_dirs` of /etc/labwire/agent.yaml; to replace a LAVA
template, in the folder named in `lava[].templates_dir`.
EOF
put labwire-agent 0644 "$work/readme" /usr/share/labwire/README
# Purge also removes the lab's certificate bundle that the admin put in /etc/labwire: a
# purged agent leaves no private key behind. (Only the agent reads these three files.)
scripts labwire-agent /etc/labwire/agent.yaml \
    "/etc/labwire/agent.pem /etc/labwire/agent.key /etc/labwire/ca.pem"
pack labwire-agent

stage labwire-coordinator
binary labwire-coordinator labwire-coordinator
put labwire-coordinator 0644 systemd/labwire-coordinator.service /usr/lib/systemd/system/labwire-coordinator.service
put labwire-coordinator 0644 config/coordinator.yaml /etc/labwire/coordinator.yaml
for f in coordinator.yaml pipeline.yaml placement.yaml; do
    put labwire-coordinator 0644 "config/$f" "/usr/share/doc/labwire-coordinator/examples/$f"
done
scripts labwire-coordinator /etc/labwire/coordinator.yaml ""
pack labwire-coordinator

stage labwire-client
binary labwire-client labwire
pack labwire-client
