# checks.<system>.module-eval: the modules (builder, scheduler, listener) evaluated by the real NixOS
# module system (with nixpkgs' own types, systemd and users modules) for a
# configuration like a build host's, with allowed-users narrowed to @wheel.
# Fails when an assertion fails or an option does not exist or does not
# type-check; its output is the unit files and the nix.conf NixOS writes.
# test/nixos/module.test.ts checks the same with a stand-in where nixpkgs is
# not available.
{ pkgs, nixpkgs, system, module }:
let
  vault = {
    address = "https://vault.example.org:8200";
    caCertFile = "/etc/ssl/certs/homelab-root-ca.pem";
    roleIdFile = "/var/lib/vault/approle/role-id";
    secretIdFile = "/var/lib/vault/approle/secret-id";
  };
  eval = nixpkgs.lib.nixosSystem {
    inherit system;
    modules = [
      module
      {
        boot.loader.grub.enable = false;
        fileSystems."/".device = "/dev/null";
        system.stateVersion = "25.05";
        # Narrowed: the builder gets in through the module's extra-allowed-users.
        nix.settings.allowed-users = [ "@wheel" ];
        services.homelab-deploy.builder = {
          enable = true;
          openFirewall = true;
          inherit vault;
          settings = {
            nats.url = "nats://nats.example.org:4222";
            repos.nixos-servers.url = "git+https://git.example.org/infra/nixos-servers.git";
            repos.nixos.url = "git+https://git.example.org/infra/nixos.git";
          };
        };
        services.homelab-deploy.listener = {
          enable = true;
          tier = "prod";
          roles = [ "dns" ];
          repo = { name = "nixos-servers"; url = "git+https://git.example.org/infra/nixos-servers.git"; };
          nkeySeedFile = "/run/secrets/homelab-deploy/listener.nkey";
          settings.nats.url = "nats://nats.example.org:4222";
        };
        services.homelab-deploy.scheduledBuilds = {
          enable = true;
          repos = [ "nixos-servers" "nixos" ];
          natsUrl = "nats://nats.example.org:4222";
          inherit vault;
        };
      }
    ];
  };
  inherit (eval) config;
  failed = map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);
  units = [
    "homelab-deploy-builder.service"
    "homelab-deploy-scheduled-build.service"
    "homelab-deploy-scheduled-build.timer"
    "homelab-deploy-listener.service"
  ];
in
if failed != [ ] then throw "homelab-deploy module assertions failed:\n${builtins.concatStringsSep "\n" failed}"
else
  pkgs.runCommand "homelab-deploy-module-eval" { } ''
    mkdir $out
    ${builtins.concatStringsSep "\n" (map (unit: "cp ${config.systemd.units.${unit}.unit}/${unit} $out/${unit}") units)}
    cp ${config.environment.etc."nix/nix.conf".source} $out/nix.conf
    grep -Fx 'allowed-users = @wheel' $out/nix.conf
    grep -Fx 'extra-allowed-users = homelab-deploy' $out/nix.conf
    grep -Fx 'Requires=nix-daemon.socket' $out/homelab-deploy-builder.service
    grep -Fx 'StartLimitBurst=5' $out/homelab-deploy-builder.service
    grep -Fx 'PrivateUsers=true' $out/homelab-deploy-builder.service
    grep -Fx 'ProtectSystem=strict' $out/homelab-deploy-builder.service
    grep -Fx 'User=homelab-deploy' $out/homelab-deploy-builder.service
    grep -Fx 'StateDirectory=homelab-deploy' $out/homelab-deploy-builder.service
    grep -Fx 'Persistent=true' $out/homelab-deploy-scheduled-build.timer
    grep -Fx 'X-RestartIfChanged=false' $out/homelab-deploy-listener.service
    grep -Fx 'Restart=always' $out/homelab-deploy-listener.service
    grep -Fx 'RandomizedDelaySec=5min' $out/homelab-deploy-scheduled-build.timer
  ''
