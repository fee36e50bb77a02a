# Both NixOS modules of homelab-deploy: services.homelab-deploy.builder and
# services.homelab-deploy.scheduledBuilds (the flake's nixosModules.default).
{
  imports = [
    ./modules/builder.nix
    ./modules/scheduled-builds.nix
  ];
}
