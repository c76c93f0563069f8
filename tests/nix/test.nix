# The Nix builds of the nix_* e2e tests: nix/default.nix without nixpkgs,
# a static busybox as runtimeShell and coreutils. `nonce` makes every test
# run build afresh instead of finding last run's output in the store.
# `twoLayerImage`, `noHistoryImage`, `shadowDir` and `nixDir` are given by
# the tests that use them: a two-layer docker-archive, one whose config has
# no history, and host binaries with their libraries
# (libexec/NAME, lib/) that stand in for nixpkgs' shadow, nix and sqlite.
{ prefix, busybox, fromImage, nonce, twoLayerImage ? null, noHistoryImage ? null, shadowDir ? null, nixDir ? null, sqliteDir ? null }:
let
  rootlayer = builtins.path { path = prefix; name = "rootlayer"; };
  bb = builtins.path { path = busybox; name = "busybox"; };
  base = builtins.path { path = fromImage; name = "base-image.tar"; };
  rl = import "${rootlayer}/share/rootlayer/nix" {
    inherit rootlayer;
    runtimeShell = "${bb}/bin/sh";
    coreutils = bb;
    system = "x86_64-linux";
    shadow = if shadowDir == null then null else wrapped "shadow" shadowDir;
    nix = if nixDir == null then null else wrapped "nix" nixDir;
    sqlite = if sqliteDir == null then null else wrapped "sqlite" sqliteDir;
  };
  # A package of host binaries: bin/NAME runs libexec/NAME with the
  # dynamic loader and libraries beside it (argv[0] kept: nix-store is nix).
  wrapped = name: dir:
    let raw = builtins.path { path = dir; name = "${name}-raw"; };
    in derivation {
      inherit name;
      system = "x86_64-linux";
      builder = "${bb}/bin/sh";
      args = [ "-c" ''
        ${bb}/bin/mkdir -p $out/bin
        for f in ${raw}/libexec/*; do
          n=''${f##*/}
          printf '#!%s\nexec %s --argv0 "$0" --library-path %s %s "$@"\n' \
            ${bb}/bin/sh ${raw}/lib/ld-linux-x86-64.so.2 ${raw}/lib "$f" > $out/bin/$n
          ${bb}/bin/chmod 555 $out/bin/$n
        done
      '' ];
    };
  # A layer whose /cpus counts the processors its script saw.
  cpusSeen = kind: enableParallelBuilding: rl.mkRootLayer {
    name = "${kind}-layer-${nonce}";
    fromImage = base;
    baseJson = builtins.toFile "base.json" (builtins.toJSON { });
    inherit enableParallelBuilding;
    runAsRoot = "grep -c ^processor /proc/cpuinfo > /cpus";
  };
  mkDrv = name: script: derivation {
    name = "${name}-${nonce}";
    system = "x86_64-linux";
    builder = "${bb}/bin/sh";
    args = [ "-c" script ];
  };
  # A closure of two: `linked` names `dep` in a file.
  dep = mkDrv "dep" "${bb}/bin/mkdir $out && echo dep > $out/file";
  linked = mkDrv "linked" "${bb}/bin/mkdir -p $out/share && echo ${dep} > $out/share/dep-path";
  # A package with no references, and an env of symlinks to it (as
  # buildEnv makes) for copyToRoot.
  tool = mkDrv "tool" "${bb}/bin/mkdir -p $out/bin && echo tool > $out/bin/tool";
  env = mkDrv "env" "${bb}/bin/mkdir -p $out/bin && ${bb}/bin/ln -s ${tool}/bin/tool $out/bin/tool";
  # Named by the script only.
  unused = mkDrv "unused" "${bb}/bin/mkdir $out";
  # Named by the config only (its Cmd), which dockerTools' layer json holds.
  cmd = mkDrv "cmd" "${bb}/bin/mkdir -p $out/bin && echo cmd > $out/bin/cmd";
  # A package whose share/ another store path links to as a directory.
  data = derivation {
    name = "test-data-${nonce}";
    system = "x86_64-linux";
    builder = "${bb}/bin/sh";
    args = [ "-c" "mkdir -p $out/share/doc && echo 'from a linked store dir' > $out/share/doc/readme" ];
  };
  root = derivation {
    name = "test-root-${nonce}";
    system = "x86_64-linux";
    builder = "${bb}/bin/sh";
    args = [ "-c" "mkdir -p $out/etc && echo 'app config' > $out/etc/app.conf && ln -s ${data}/share $out/share" ];
  };
in
{
  # What a build with the same settings sees of the host's devices.
  sandboxDevices = derivation {
    name = "sandbox-devices-${nonce}";
    system = "x86_64-linux";
    builder = "${bb}/bin/sh";
    args = [ "-c" "ls /dev > $out" ];
    requiredSystemFeatures = [ "kvm" ];
  };

  image = rl.buildImage {
    name = "RootLayer-Test-${nonce}";
    tag = "V1";
    fromImage = base;
    copyToRoot = root;
    config = { Env = [ "APP=1" ]; Cmd = [ "/bin/sh" ]; User = "app"; };
    runAsRoot = ''
      # Debian's busybox has no adduser: add the group and user as they do.
      echo 'app:x:2000:' >> /etc/group
      echo 'app:x:2000:2000::/home/app:/bin/sh' >> /etc/passwd
      mkdir -p /home/app
      chown 2000:2000 /home/app
      chown -R app:app /data
      cp ${bb}/bin/busybox /usr/local/bin/suid-tool
      chmod 4755 /usr/local/bin/suid-tool
      rm /old/file
      ls /nix/store > /store-listing
    '';
    extraCommands = ''
      echo made by extraCommands > extra-file
    '';
  };

  failing = rl.buildImage {
    name = "failing-${nonce}";
    fromImage = base;
    runAsRoot = ''
      echo "about to fail on purpose"
      exit 3
    '';
  };

  # nixpkgs' layersUnpackOrder, first image: no base, a script whose
  # layer names no store path.
  refsNone = rl.buildImage {
    name = "refs-none-${nonce}";
    runAsRoot = "echo -n a >> /layer-order";
  };

  # A symlink the script makes into a store path with a closure of two,
  # copyToRoot's symlink to a third, the config's Cmd names a fourth; the
  # script names a fifth.
  refsLink = rl.buildImage {
    name = "refs-link-${nonce}";
    copyToRoot = env;
    config.Cmd = [ "${cmd}/bin/cmd" ];
    runAsRoot = ''
      test -d ${unused}
      ln -s ${linked}/share /share-link
    '';
  };

  createdNow = rl.buildImage {
    name = "created-now-${nonce}";
    fromImage = builtins.path { path = noHistoryImage; name = "no-history.tar"; };
    created = "now";
    runAsRoot = "date > /built";
  };

  # The manual's shadow example on an empty base.
  shadow = rl.buildImage {
    name = "shadow-${nonce}";
    runAsRoot = ''
      ${rl.shadowSetup}
      groupadd -r app
      useradd -r -g app app
    '';
  };

  exported = rl.exportImage { fromImage = builtins.path { path = twoLayerImage; name = "two-layer.tar"; }; };

  withNixDb = rl.buildImageWithNixDb {
    name = "with-nix-db-${nonce}";
    copyToRoot = root;
    runAsRoot = "echo with-db > /marker";
  };

  zstd = rl.buildImage {
    name = "zstd-${nonce}";
    compressor = "zstd";
    fromImage = base;
    runAsRoot = "echo zstd > /zstd";
  };

  # The VM's vCPUs as the script saw them: nix-build --cores N gives N
  # where the build enables parallel building, else 1.
  parallelLayer = cpusSeen "parallel" true;
  serialLayer = cpusSeen "serial" false;
  layer = rl.mkRootLayer {
    name = "layer-${nonce}";
    fromImage = base;
    baseJson = builtins.toFile "base.json" (builtins.toJSON { config = { Env = [ "X=1" ]; }; });
    runAsRoot = ''
      echo root-layer > /root-layer-file
      rm /old/stays
    '';
  };
}
