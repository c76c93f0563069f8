# rootlayer as a drop-in for nixpkgs dockerTools' mkRootLayer and
# buildImage: the runAsRoot script runs in rootlayer's microVM instead of
# vmTools' QEMU, in an ordinary sandboxed build that needs only /dev/kvm
# (`requiredSystemFeatures = [ "kvm" ]`, as vmTools builds have).
#
# A function of what it builds with, so that it needs no nixpkgs:
#
#   with nixpkgs:  import ./nix { inherit (pkgs) runtimeShell coreutils; rootlayer = ...; }
#   without:       import ./nix { rootlayer = ./prefix; runtimeShell = "${busybox}/bin/sh"; }
#
# - rootlayer: the directory scripts/install made (bin/rootlayer, static, and
#   share/rootlayer/{vmlinux,initramfs.cpio}), as a path or a derivation;
# - runtimeShell: a POSIX shell (a store path string, as nixpkgs' runtimeShell).
#   It runs the builder and is the runAsRoot script's interpreter in the guest;
# - coreutils: put first on the script's PATH as dockerTools does; null leaves
#   only /bin (a busybox runtimeShell brings its own applets).
# - shadow: what shadowSetup puts on PATH (nixpkgs' shadow); only shadowSetup
#   needs it.
# - nix, sqlite: what buildImageWithNixDb loads the database with and resets
#   its registration times with (nixpkgs' nix and sqlite); only it needs
#   them, and without sqlite the times are the build's (not reproducible).
{ rootlayer
, runtimeShell
, coreutils ? null
, shadow ? null
, nix ? null
, sqlite ? null
, system ? builtins.currentSystem
, ...
}:
let
  toList = x: if x == null then [ ] else if builtins.isList x then x else [ x ];
  upper = [ "A" "B" "C" "D" "E" "F" "G" "H" "I" "J" "K" "L" "M" "N" "O" "P" "Q" "R" "S" "T" "U" "V" "W" "X" "Y" "Z" ];
  lower = [ "a" "b" "c" "d" "e" "f" "g" "h" "i" "j" "k" "l" "m" "n" "o" "p" "q" "r" "s" "t" "u" "v" "w" "x" "y" "z" ];
  toLower = builtins.replaceStrings upper lower;
  baseNameOf' = name: baseNameOf (toString name);
  # The mtime nix/build.sh clamps to (stdenv's, when the build sets none).
  sourceDateEpoch = "315532800";

  # dockerTools' shellScript: the user's text behind a #! line, set -e and PATH.
  shellScript = name: text: derivation {
    inherit name system;
    builder = runtimeShell;
    args = [ "-c" ''printf '%s' "$text" > "$out"'' ];
    text = ''
      #!${runtimeShell}
      set -e
      export PATH=${if coreutils == null then "" else "${coreutils}/bin:"}/bin
      ${text}
    '';
  };

  # A file of `text`, as nixpkgs' writeText (its references are the store
  # paths the text names).
  writeText = name: text: derivation {
    inherit name system text;
    builder = runtimeShell;
    args = [ "-c" ''printf '%s' "$text" > "$out"'' ];
  };

  # exportReferencesGraph for `paths`: graph-0, graph-1, ... in the build
  # directory, and their names in `graphs`.
  referencesGraphs = paths: {
    graphs = toString (builtins.genList (i: "graph-${toString i}") (builtins.length paths));
    exportReferencesGraph =
      builtins.concatLists (builtins.genList (i: [ "graph-${toString i}" (builtins.elemAt paths i) ]) (builtins.length paths));
  };

  # One derivation that runs rootlayer; `args` are the builder's variables
  # (nix/build.sh reads them). `references`: the store paths whose closures
  # are the candidates for the layer's references.
  rootlayerBuild = { name, references ? [ ], ... }@args:
    derivation ((builtins.removeAttrs args [ "references" ]) // (referencesGraphs references) // {
      inherit system;
      builder = runtimeShell;
      args = [ ./build.sh ];
      rootlayer = "${rootlayer}/bin/rootlayer";
      # A busybox runtimeShell runs its own applet for a bare `rm`.
      rm = if coreutils == null then "rm" else "${coreutils}/bin/rm";
      requiredSystemFeatures = [ "kvm" ];
    });

  # dockerTools' compressors: the whole docker-archive, named by its
  # extension (rootlayer compresses as the output's name ends).
  compressors = {
    none = { ext = ""; };
    gz = { ext = ".gz"; };
    zstd = { ext = ".zst"; };
  };
  compressorForImage = compressor: imageName: compressors.${compressor} or
    (throw "in docker image ${imageName}: compressor must be one of: [${toString (builtins.attrNames compressors)}]");

  # What mkRootLayer and buildImage hand the builder alike.
  common = { runAsRoot, contents, keepContentsDirlinks, fromImage, fromImageName, fromImageTag
           , diskSize, buildVMMemorySize, extraCommands, enableParallelBuilding }: rec {
    runAsRootScript = shellScript "run-as-root.sh" (if runAsRoot == null then ":" else runAsRoot);
    args = {
      inherit runAsRootScript;
      extraCommandsScript = if extraCommands == "" then "" else shellScript "extra-commands.sh" extraCommands;
      contentsPaths = toString (toList contents);
      keepContentsDirlinks = if keepContentsDirlinks then "1" else "";
      fromImage = if fromImage == null then "" else fromImage;
      fromImageName = if fromImageName == null then "" else fromImageName;
      fromImageTag = if fromImageTag == null then "" else fromImageTag;
      diskSize = toString diskSize;
      memSize = toString buildVMMemorySize;
      # As vmTools: the VM gets $NIX_BUILD_CORES vCPUs when the build
      # enables parallel building, else one (nix/build.sh).
      enableParallelBuilding = if enableParallelBuilding then "1" else "";
    };
  };
in
rec {
  inherit compressors;

  # dockerTools.mkRootLayer: $out/layer.tar, $out/json (baseJson plus the
  # layer checksum) and $out/VERSION.
  mkRootLayer =
    { name
    , runAsRoot
    , baseJson
    , copyToRoot ? null
    , contents ? copyToRoot
    , keepContentsDirlinks ? false
    , fromImage ? null
    , fromImageName ? null
    , fromImageTag ? null
    , diskSize ? 1024
    , buildVMMemorySize ? 512
    , extraCommands ? ""
    , enableParallelBuilding ? false
    }:
    let c = common { inherit runAsRoot contents keepContentsDirlinks fromImage fromImageName fromImageTag diskSize buildVMMemorySize extraCommands enableParallelBuilding; };
    in rootlayerBuild (c.args // {
      name = "docker-layer-${baseNameOf' name}";
      format = "layer";
      inherit baseJson;
    });

  # dockerTools.buildImage: a docker-archive .tar.gz (docker load, podman
  # load) of fromImage plus one layer: copyToRoot, runAsRoot's changes and
  # the store paths those reference (owned by root), with `config` merged
  # into the base's config.
  buildImage =
    { name
    , tag ? "latest"
    , fromImage ? null
    , fromImageName ? null
    , fromImageTag ? null
    , copyToRoot ? null
    , contents ? copyToRoot
    , keepContentsDirlinks ? false
    , config ? null
    , architecture ? "amd64"
    , extraCommands ? ""
    , runAsRoot ? null
    , diskSize ? 1024
    , buildVMMemorySize ? 512
    , created ? "1970-01-01T00:00:01Z"
    , compressor ? "gz"
    , enableParallelBuilding ? false
    }:
    let
      baseName = baseNameOf' name;
      compress = compressorForImage compressor name;
      c = common { inherit runAsRoot contents keepContentsDirlinks fromImage fromImageName fromImageTag diskSize buildVMMemorySize extraCommands enableParallelBuilding; };
      # dockerTools' baseJson: `created = "now"` is resolved by rootlayer,
      # once, for the config, the history and the layer json alike.
      baseJson = writeText "${baseName}-config.json" (builtins.toJSON { inherit config architecture created; os = "linux"; });
    in rootlayerBuild (c.args // {
      name = "docker-image-${baseName}.tar${compress.ext}";
      format = "docker-archive";
      imageName = toLower name;
      imageTag = toLower tag;
      inherit created baseJson;
      # The candidates for the layer's references, as they are dockerTools'
      # layer's: everything its build had (copyToRoot, the scripts, the
      # config). The layer gets the closure of those its files, names and
      # symlink targets, or its json, name; not the rest.
      references = toList contents ++ [ c.runAsRootScript baseJson ]
        ++ (if c.args.extraCommandsScript == "" then [ ] else [ c.args.extraCommandsScript ]);
    });

  # dockerTools.shadowSetup: runAsRoot text that makes /etc/passwd,
  # /etc/shadow, /etc/group, /etc/gshadow, the PAM `other` file and
  # /etc/login.defs where the image has none, and puts shadow on PATH
  # (groupadd, useradd).
  shadowSetup =
    if shadow == null then throw "rootlayer nix: shadowSetup needs `shadow` (import ./nix { shadow = pkgs.shadow; ... })" else ''
      export PATH=${shadow}/bin:$PATH
      mkdir -p /etc/pam.d
      if [[ ! -f /etc/passwd ]]; then
        echo "root:x:0:0::/root:${runtimeShell}" > /etc/passwd
        echo "root:!x:::::::" > /etc/shadow
      fi
      if [[ ! -f /etc/group ]]; then
        echo "root:x:0:" > /etc/group
        echo "root:x::" > /etc/gshadow
      fi
      if [[ ! -f /etc/pam.d/other ]]; then
        cat > /etc/pam.d/other <<EOF
      account sufficient pam_unix.so
      auth sufficient pam_rootok.so
      password requisite pam_unix.so nullok yescrypt
      session required pam_unix.so
      EOF
      fi
      if [[ ! -f /etc/login.defs ]]; then
        touch /etc/login.defs
      fi
    '';

  # dockerTools.exportImage: the image's root filesystem, flattened, as
  # one tar at $out (rootlayer export, on the host: no VM needed, so
  # diskSize is accepted and unused).
  exportImage = { name ? (if fromImage ? name then fromImage.name else builtins.unsafeDiscardStringContext (baseNameOf' fromImage)), fromImage, fromImageName ? null, fromImageTag ? null, diskSize ? 1024 }:
    derivation {
      inherit name system fromImage;
      builder = runtimeShell;
      rootlayer = "${rootlayer}/bin/rootlayer";
      fromImageName = if fromImageName == null then "" else fromImageName;
      fromImageTag = if fromImageTag == null then "" else fromImageTag;
      args = [ "-c" ''
        set -eu
        set -- export --from-image "$fromImage" --out "$out"
        [ -z "$fromImageName" ] || set -- "$@" --from-image-name "$fromImageName"
        [ -z "$fromImageTag" ] || set -- "$@" --from-image-tag "$fromImageTag"
        "$rootlayer" "$@"
      '' ];
    };

  # nixpkgs' closureInfo { rootPaths }: $out/registration (for
  # nix-store --load-db), $out/store-paths and $out/total-nar-size.
  closureInfo = { rootPaths }:
    derivation ((referencesGraphs rootPaths) // {
      name = "closure-info";
      inherit system;
      builder = runtimeShell;
      rootlayer = "${rootlayer}/bin/rootlayer";
      args = [ "-c" ''"$rootlayer" closure-info --out "$out" $graphs'' ];
    });

  # dockerTools.buildImageWithNixDb: buildImage with a Nix database in the
  # layer that registers the closure of copyToRoot (or contents), loaded
  # with `nix` in extraCommands as dockerTools does, and a gcroot for each.
  buildImageWithNixDb = args@{ copyToRoot ? contents, contents ? null, extraCommands ? "", ... }:
    let
      contentsList = toList copyToRoot;
      nixStore = if nix == null then throw "rootlayer nix: buildImageWithNixDb needs `nix` (import ./nix { inherit (pkgs) nix sqlite; ... })" else "${nix}/bin/nix-store";
    in buildImage (args // {
      extraCommands = ''
        echo "Generating the nix database..."
        echo "Warning: only the database of the deepest Nix layer is loaded."
        echo "         If you want to use nix commands in the container, it would"
        echo "         be better to only have one layer that contains a nix store."

        export NIX_REMOTE=local?root=$PWD
        # A user is required by nix
        export USER=nobody
        ${nixStore} --load-db < ${closureInfo { rootPaths = contentsList; }}/registration
        ${if sqlite == null then "" else ''
          # Reset registration times to make the image reproducible
          ${sqlite}/bin/sqlite3 nix/var/nix/db/db.sqlite "UPDATE ValidPaths SET registrationTime = ${sourceDateEpoch}"
        ''}
        mkdir -p nix/var/nix/gcroots/docker/
        for i in ${toString contentsList}; do
          ln -s $i nix/var/nix/gcroots/docker/$(basename $i)
        done;
      '' + extraCommands;
    });
}
