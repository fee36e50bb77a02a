# The flake the VM test (vm.nix) builds: two "hosts" whose toplevels are
# /bin/sh derivations (the nix sandbox provides /bin/sh), so the VM needs
# nothing from the network. beta breaks once the repo has a file `broken`.
# vm.nix fills in @SYSTEM@.
{
  description = "homelab-deploy VM test flake";

  outputs = { self }:
    let
      host = name: ok: {
        config.system.build.toplevel = derivation {
          inherit name;
          system = "@SYSTEM@";
          builder = "/bin/sh";
          args = [ "-c" (if ok then "echo ${name} > $out" else "echo ${name} is broken >&2; exit 1") ];
        };
      };
    in
    {
      nixosConfigurations = {
        alpha = host "alpha" true;
        beta = host "beta" (!builtins.pathExists ./broken);
      };
    };
}
