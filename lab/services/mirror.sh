#!/bin/sh
# Entry point of ag-mirror, the lab's Debian package mirror (run by lab/lab.sh under `podman run --init`):
#   mirror.sh
# Builds a small apt repository with the Debian tools at every start, then serves it over HTTP on
# port 80 (mirror.py, every request logged): two tiny packages made with dpkg-deb --build, their
# Packages index and the Release file made with apt-ftparchive (from apt-utils in the image's
# offline repository /opt/lab-apt, unpacked with dpkg-deb -x, not installed). Unsigned: clients
# use `deb [trusted=yes] http://deb.agentguard.lab/debian bookworm main` (see lab/README.md).
set -eu
mkdir -p /var/log/lab /opt/apt-utils
deb=$(ls /opt/lab-apt/apt-utils_*.deb)
dpkg-deb -x "$deb" /opt/apt-utils
ftparchive=/opt/apt-utils/usr/bin/apt-ftparchive
root=/srv/mirror/debian
rm -rf /srv/mirror /tmp/mirror-build
mkdir -p "$root/pool/main" "$root/dists/bookworm/main/binary-amd64" /tmp/mirror-build
for pkg in agentguard-lab-hello agentguard-lab-motd; do
  dir=/tmp/mirror-build/$pkg
  mkdir -p "$dir/DEBIAN" "$dir/usr/share/agentguard-lab"
  printf '%s 1.0 from the agentguard lab mirror\n' "$pkg" > "$dir/usr/share/agentguard-lab/$pkg.txt"
  cat > "$dir/DEBIAN/control" <<CONTROL
Package: $pkg
Version: 1.0
Architecture: all
Maintainer: agentguard lab <lab@agentguard.lab>
Priority: optional
Section: misc
Description: agentguard lab mirror test package
 A file under /usr/share/agentguard-lab, nothing else: proves that apt fetched it from ag-mirror.
CONTROL
  dpkg-deb --build --root-owner-group "$dir" "$root/pool/main/${pkg}_1.0_all.deb" >/dev/null
done
cd "$root"
"$ftparchive" packages pool > dists/bookworm/main/binary-amd64/Packages
gzip -9nk dists/bookworm/main/binary-amd64/Packages
"$ftparchive" -o APT::FTPArchive::Release::Origin=agentguard-lab-mirror \
  -o APT::FTPArchive::Release::Label=agentguard-lab-mirror -o APT::FTPArchive::Release::Suite=bookworm \
  -o APT::FTPArchive::Release::Codename=bookworm -o APT::FTPArchive::Release::Architectures=amd64 \
  -o APT::FTPArchive::Release::Components=main release dists/bookworm > /tmp/mirror-build/Release
mv /tmp/mirror-build/Release dists/bookworm/Release
rm -rf /tmp/mirror-build
exec python3 /lab/services/mirror.py --name mirror --root /srv/mirror --port 80 --log /var/log/lab/labserver.log
