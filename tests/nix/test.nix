# The Nix builds of the nix_* e2e tests: nix/default.nix without nixpkgs,
# a static busybox as runtimeShell and coreutils. `nonce` makes every test
# run build afresh instead of finding last run's output in the store.
{ prefix, busybox, fromImage, nonce }:
let
  rootlayer = builtins.path { path = prefix; name = "rootlayer"; };
  bb = builtins.path { path = busybox; name = "busybox"; };
  base = builtins.path { path = fromImage; name = "base-image.tar"; };
  rl = import "${rootlayer}/share/rootlayer/nix" {
    inherit rootlayer;
    runtimeShell = "${bb}/bin/sh";
    coreutils = bb;
    system = "x86_64-linux";
  };
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
