# The demo's flake: three "NixOS hosts" that share a common derivation, as
# real hosts share nixpkgs. Each toplevel is a /bin/sh derivation, so the
# demo needs nothing from the network. examples/demo.ts copies this to a
# temporary git repo and fills in @SYSTEM@ (and a nonce, so every demo run
# really builds).
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
      host = name: {
        config.system.build.toplevel = derivation {
          name = "nixos-system-${name}";
          inherit system nonce;
          builder = "/bin/sh";
          args = [ "-c" ''
            echo "assembling the system of ${name} on top of ${common}"
            /bin/sleep 1
            /bin/mkdir $out
            echo "${name}" > $out/hostname
          '' ];
        };
      };
    in {
      nixosConfigurations = {
        web01 = host "web01";
        db01 = host "db01";
        monitor01 = host "monitor01";
      };
    };
}
