{
  description = "homelab-deploy: a Nix build service driven over NATS (package, NixOS modules, checks)";

  # No flake.lock is committed yet: it was written where nixpkgs cannot be
  # fetched. The first `nix flake lock` on a machine with network writes it
  # (docs/deployment.md).
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});
    in
    {
      overlays.default = final: prev: {
        homelab-deploy = final.callPackage ./nix/package.nix { };
      };

      packages = forAllSystems (system: pkgs: rec {
        homelab-deploy = pkgs.callPackage ./nix/package.nix { };
        default = homelab-deploy;
      });

      # The modules build the package with the host's own nixpkgs (or take
      # pkgs.homelab-deploy from the overlay); `package` overrides it.
      nixosModules = {
        builder = ./nix/modules/builder.nix;
        scheduled-builds = ./nix/modules/scheduled-builds.nix;
        listener = ./nix/modules/listener.nix;
        default = ./nix/module.nix;
      };

      checks = forAllSystems (system: pkgs: {
        package = self.packages.${system}.default;
        module-eval = import ./nix/tests/module-eval.nix { inherit pkgs nixpkgs system; module = self.nixosModules.default; };
        vm = import ./nix/tests/vm.nix { inherit pkgs; module = self.nixosModules.default; package = self.packages.${system}.default; };
      });

      devShells = forAllSystems (system: pkgs: {
        default = pkgs.mkShell {
          packages = [
            pkgs.nodejs_22
            pkgs.nix
            pkgs.git
            pkgs.nats-server
            pkgs.prometheus
            pkgs.prometheus.cli # promtool
            pkgs.natscli
            pkgs.nsc # nsc generate nkey --user
            pkgs.jq
            pkgs.openssl
          ];
        };
      });
    };
}
