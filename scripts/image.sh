#!/usr/bin/env bash
# Builds tollgate's OCI image here, without a daemon or a registry: a root
# filesystem from scratch holding the binary and the few shared libraries it
# links (glibc, libgcc), a non-root user (65532, as distroless's "nonroot"),
# and deploy/Dockerfile's entrypoint, command, user, working directory and
# ports. deploy/Dockerfile stays the recipe for machines that reach a registry.
#   scripts/image.sh [BINARY [OUT]]
# BINARY defaults to a fresh release build; OUT (default target/image) gets
# the OCI layout (OUT/oci, tagged with the crate's version) and one archive of it
# (OUT/tollgate-<version>.oci.tar, for `skopeo copy oci-archive:… docker://…`
# or `podman load`). Prints the image's size. Needs umoci (Debian's; installed
# when missing) and root, to give the files their owners.
set -euo pipefail
cd "$(dirname "$0")/.."
version="$(awk -F'"' '/^version = / {print $2; exit}' Cargo.toml)"
bin="${1:-}"
out="${2:-target/image}"
if [ -z "$bin" ]; then
    cargo build --release --locked --quiet --bin tollgate
    bin=target/release/tollgate
fi
if ! command -v umoci >/dev/null; then
    sudo_=""; [ "$(id -u)" -ne 0 ] && sudo_="sudo"
    $sudo_ apt-get update -qq
    $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq umoci >/dev/null
fi

rm -rf "$out"
mkdir -p "$out"
layout="$out/oci" bundle="$out/bundle"
image="$layout:$version"
umoci init --layout "$layout"
umoci new --image "$image"
umoci unpack --image "$image" "$bundle" >/dev/null
root="$bundle/rootfs"

# The binary, and every shared library it loads (resolved through symlinks,
# installed under the name the loader asks for).
# Without its line tables (most of a release binary's size); the symbol
# table stays, so a backtrace still names functions.
install -D -m 0755 "$bin" "$root/usr/local/bin/tollgate"
strip --strip-debug "$root/usr/local/bin/tollgate"
ldd "$bin" | awk '/=>/ {print $3} !/=>/ && /^[ \t]*\// {print $1}' | while read -r lib; do
    [ -e "$lib" ] || continue
    install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
done
# The user, its home (the default --state lands there) and a /tmp.
mkdir -p "$root/etc" "$root/home/nonroot" "$root/tmp"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
    > "$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"
chown 65532:65532 "$root/home/nonroot"
chmod 1777 "$root/tmp"

umoci repack --image "$image" "$bundle"
# What deploy/Dockerfile says after FROM.
umoci config --image "$image" \
    --author "tollgate" \
    --config.user 65532:65532 \
    --config.workingdir /home/nonroot \
    --config.entrypoint /usr/local/bin/tollgate \
    --config.cmd serve --config.cmd --listen --config.cmd 0.0.0.0:8081 \
    --config.exposedports 8081/tcp --config.exposedports 8080/tcp --config.exposedports 9090/tcp \
    --config.label "org.opencontainers.image.title=tollgate" \
    --config.label "org.opencontainers.image.version=$version"
umoci gc --layout "$layout"
rm -rf "$bundle"
tar -C "$layout" -cf "$out/tollgate-$version.oci.tar" .

# The size a registry stores: the compressed layers, config and manifest.
bytes="$(find "$layout/blobs" -type f -printf '%s\n' | awk '{s += $1} END {print s}')"
echo "image tollgate:$version in $layout ($out/tollgate-$version.oci.tar): $((bytes / 1024)) KiB compressed"
