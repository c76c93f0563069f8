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

set -- run-as-root --script "$runAsRootScript" --store "$NIX_STORE" \
	--disk-size "$diskSize" --mem-size "$memSize" --format "$format" --out "$out"
for dir in $contentsPaths; do
	set -- "$@" --contents "$dir"
done
[ -z "$keepContentsDirlinks" ] || set -- "$@" --keep-contents-dirlinks
[ -z "$fromImage" ] || set -- "$@" --from-image "$fromImage"
[ -z "$fromImageName" ] || set -- "$@" --from-image-name "$fromImageName"
[ -z "$fromImageTag" ] || set -- "$@" --from-image-tag "$fromImageTag"
[ -z "$extraCommandsScript" ] || set -- "$@" --extra-commands "$extraCommandsScript"

if [ "$format" = layer ]; then
	set -- "$@" --base-json "$baseJson"
else
	printf '%s' "$baseJsonText" > "$TMPDIR/base.json"
	set -- "$@" --base-json "$TMPDIR/base.json" --name "$imageName" --tag "$imageTag" --created "$created"
fi

# The store paths the layer references: every path of the closures Nix
# wrote (exportReferencesGraph: path, deriver, count, references), but the
# runAsRoot script itself.
if [ "$closureCount" -gt 0 ]; then
	: > "$TMPDIR/store-paths"
	i=0
	while [ "$i" -lt "$closureCount" ]; do
		while IFS= read -r path; do
			IFS= read -r deriver
			IFS= read -r n
			while [ "$n" -gt 0 ]; do
				IFS= read -r ref
				n=$((n - 1))
			done
			[ "$path" = "$runAsRootScript" ] || printf '%s\n' "$path" >> "$TMPDIR/store-paths"
		done < "closure-$i"
		i=$((i + 1))
	done
	set -- "$@" --store-paths "$TMPDIR/store-paths"
fi

"$rootlayer" "$@"

# mkRootLayer's output is dockerTools' three files (rootlayer adds
# layer.sha256).
[ "$format" != layer ] || $rm "$out/layer.sha256"
