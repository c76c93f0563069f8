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
{ rootlayer
, runtimeShell
, coreutils ? null
, system ? builtins.currentSystem
, ...
}:
let
  toList = x: if x == null then [ ] else if builtins.isList x then x else [ x ];
  upper = [ "A" "B" "C" "D" "E" "F" "G" "H" "I" "J" "K" "L" "M" "N" "O" "P" "Q" "R" "S" "T" "U" "V" "W" "X" "Y" "Z" ];
  lower = [ "a" "b" "c" "d" "e" "f" "g" "h" "i" "j" "k" "l" "m" "n" "o" "p" "q" "r" "s" "t" "u" "v" "w" "x" "y" "z" ];
  toLower = builtins.replaceStrings upper lower;
  baseNameOf' = name: baseNameOf (toString name);

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

  # One derivation that runs rootlayer; `args` are the builder's variables
  # (nix/build.sh reads them).
  rootlayerBuild = { name, closures ? [ ], ... }@args:
    derivation ((builtins.removeAttrs args [ "closures" ]) // {
      inherit system;
      builder = runtimeShell;
      args = [ ./build.sh ];
      rootlayer = "${rootlayer}/bin/rootlayer";
      # A busybox runtimeShell runs its own applet for a bare `rm`.
      rm = if coreutils == null then "rm" else "${coreutils}/bin/rm";
      requiredSystemFeatures = [ "kvm" ];
      # The store closure of what the layer references, as files in the
      # build directory (closure-0, closure-1, ...).
      closureCount = toString (builtins.length closures);
      exportReferencesGraph =
        builtins.concatLists (builtins.genList (i: [ "closure-${toString i}" (builtins.elemAt closures i) ]) (builtins.length closures));
    });

  # What mkRootLayer and buildImage hand the builder alike.
  common = { runAsRoot, contents, keepContentsDirlinks, fromImage, fromImageName, fromImageTag
           , diskSize, buildVMMemorySize, extraCommands }: rec {
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
    };
  };
in
rec {
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
    }:
    let c = common { inherit runAsRoot contents keepContentsDirlinks fromImage fromImageName fromImageTag diskSize buildVMMemorySize extraCommands; };
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
    }:
    let
      baseName = baseNameOf' name;
      c = common { inherit runAsRoot contents keepContentsDirlinks fromImage fromImageName fromImageTag diskSize buildVMMemorySize extraCommands; };
    in rootlayerBuild (c.args // {
      name = "docker-image-${baseName}.tar.gz";
      format = "docker-archive";
      imageName = toLower name;
      imageTag = toLower tag;
      inherit created;
      # Text, not a file: `config` may name store paths of derivations.
      baseJsonText = builtins.toJSON { inherit config architecture created; os = "linux"; };
      # What the layer references: the contents' closures and the script's
      # (without the script itself).
      closures = toList contents ++ [ c.runAsRootScript ];
    });
}
