# The NixOS modules of homelab-deploy: services.homelab-deploy.builder,
# services.homelab-deploy.scheduledBuilds and services.homelab-deploy.listener
# (the flake's nixosModules.default). Each does nothing until enabled.
{
  imports = [
    ./modules/builder.nix
    ./modules/scheduled-builds.nix
    ./modules/listener.nix
  ];
}
