# The demo's flake: three "NixOS hosts" that share a common derivation, as
# real hosts share nixpkgs. Each toplevel is NixOS-shaped, so a deploy
# listener can switch to it: named nixos-system-<host>-…, with
# bin/switch-to-configuration, kernel, initrd and kernel-modules. Those
# pieces are the test suite's fixture system (./nixos-system.nix and
# ./switch-to-configuration.sh come from test/fixtures/system-flake:
# examples/demo.ts lays this file over that directory in a temporary git
# repo, fills in @SYSTEM@, and writes a nonce, so every demo run really
# builds). Everything is /bin/sh: nothing comes from the network, and the
# switch script only records what it was asked to do in the demo's temp dir.
{
  description = "homelab-deploy demo flake";

  outputs = { self }:
    let
      system = "@SYSTEM@";
      nonce = builtins.readFile ./nonce;
      common = derivation {
        name = "common-config";
        inherit system nonce;
        builder = "/bin/sh";
        args = [ "-c" ''
          echo "writing the configuration every host shares"
          /bin/mkdir $out
          echo "timezone=Europe/Oslo" > $out/common.conf
        '' ];
      };
      nixosSystem = import ./nixos-system.nix {
        inherit system nonce;
        extraCommands = name: ''
          echo "assembling the system of ${name} on top of ${common}"
          /bin/sleep 1
          /bin/ln -s ${common}/common.conf $out/common.conf
        '';
      };
      host = name: { config.system.build.toplevel = nixosSystem name; };
    in {
      nixosConfigurations = {
        web01 = host "web01";
        db01 = host "db01";
        monitor01 = host "monitor01";
      };
    };
}
