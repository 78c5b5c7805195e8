#!/usr/bin/env bash
# `make package`: the collector's Debian package, built by cargo-deb (installed into
# .cache/cargo-deb on first use), then checked: its control data, its files, and its systemd
# unit with `systemd-analyze verify` against the package's own file tree.
# Output: target/debian/seqmon-collector_<version>-1_<arch>.deb
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

deb_root=.cache/cargo-deb
if ! [ -x "$deb_root/bin/cargo-deb" ]; then
  echo "== installing cargo-deb into $deb_root (first time: a few minutes)"
  cargo install --locked cargo-deb --root "$deb_root"
fi
echo "== building the collector (release) and its package"
"$deb_root/bin/cargo-deb" --locked -p seqmon-collector
deb=$(ls -t target/debian/seqmon-collector_*.deb | head -1)
echo "== $deb"
dpkg-deb --info "$deb"
dpkg-deb --contents "$deb"

# The unit and the binary, unpacked as they would be installed, for systemd's own checker.
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
dpkg-deb --extract "$deb" "$tree"
for f in usr/bin/seqmon-collector etc/seqmon-collector/collector.toml \
  usr/share/doc/seqmon-collector/README.md; do
  [ -e "$tree/$f" ] || { echo "package lacks /$f" >&2; exit 1; }
done
unit=$(find "$tree" -name seqmon-collector.service | head -1)
[ -n "$unit" ] || { echo "package lacks the systemd unit" >&2; exit 1; }
if command -v systemd-analyze >/dev/null; then
  # The host's systemd checks the unit, pointed at the packaged binary (the unpacked tree alone
  # has none of the targets the unit orders itself against).
  sed "s#/usr/bin/seqmon-collector#$tree/usr/bin/seqmon-collector#g" "$unit" >"$tree/seqmon-collector.service"
  systemd-analyze verify "$tree/seqmon-collector.service"
  echo "systemd-analyze verify: ok"
fi
"$tree/usr/bin/seqmon-collector" --version
echo "package ready: $deb"
