# The builder of nix/default.nix's derivations: runs rootlayer once.
# Shell builtins only, so that any POSIX runtimeShell will do; the
# variables are the derivation's attributes.
set -eu

# Who this build runs as, for the log: inside the sandbox's user
# namespace, and the host user that maps to.
while read -r inside host count; do
	echo "rootlayer-nix: building $name as uid $inside (host uid $host)"
done < /proc/self/uid_map

# Every mtime in the layer clamped to one time, as stdenv sets it for
# every nixpkgs build (and dockerTools' tar --mtime uses), so that the
# same inputs give the same bytes.
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-315532800}"

# A cache for this build alone: the base disk is made in the build's own
# temporary directory, and nothing outlives the build but $out.
export ROOTLAYER_CACHE="$TMPDIR/rootlayer-cache"
# So a snapshot of the booted guest would serve no later build: take none.
export ROOTLAYER_NO_SNAPSHOT=1

# vCPUs as vmTools gives its VM: the build's cores ($NIX_BUILD_CORES, 0
# meaning all of them) where the derivation enables parallel building,
# else one; never more than this host has.
cpus=1
if [ -n "${enableParallelBuilding:-}" ]; then
	host=0
	while read -r key _; do
		[ "$key" != processor ] || host=$((host + 1))
	done < /proc/cpuinfo
	cpus=${NIX_BUILD_CORES:-1}
	[ "$cpus" -ge 1 ] && [ "$cpus" -le "$host" ] || cpus=$host
	[ "$cpus" -le 32 ] || cpus=32
fi
echo "rootlayer-nix: $cpus vCPUs"

set -- run-as-root --script "$runAsRootScript" --store "$NIX_STORE" \
	--disk-size "$diskSize" --mem-size "$memSize" --cpus "$cpus" --format "$format" --out "$out"
for dir in $contentsPaths; do
	set -- "$@" --contents "$dir"
done
[ -z "$keepContentsDirlinks" ] || set -- "$@" --keep-contents-dirlinks
[ -z "$fromImage" ] || set -- "$@" --from-image "$fromImage"
[ -z "$fromImageName" ] || set -- "$@" --from-image-name "$fromImageName"
[ -z "$fromImageTag" ] || set -- "$@" --from-image-tag "$fromImageTag"
[ -z "$extraCommandsScript" ] || set -- "$@" --extra-commands "$extraCommandsScript"

set -- "$@" --base-json "$baseJson"
[ "$format" = layer ] || set -- "$@" --name "$imageName" --tag "$imageTag" --created "$created"

# The candidates for the layer's references (exportReferencesGraph files
# Nix wrote): rootlayer adds the closure of those the layer names, as
# dockerTools adds `writeReferencesToFile layer`.
for graph in $graphs; do
	set -- "$@" --references-graph "$graph"
done

"$rootlayer" "$@"

# mkRootLayer's output is dockerTools' three files (rootlayer adds
# layer.sha256).
[ "$format" != layer ] || $rm "$out/layer.sha256"
