# services.homelab-deploy.builder: `homelab-deploy builder` as a hardened
# systemd service. `settings` is the daemon's config (config.example.yaml),
# written as JSON; the module adds the state directory, the system's nix and
# the credentials. See docs/deployment.md.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption mkEnableOption mkIf types optional optionalAttrs recursiveUpdate hasPrefix removePrefix;
  common = import ./common.nix { inherit lib; };

  cfg = config.services.homelab-deploy.builder;
  unit = "homelab-deploy-builder";
  settingsFormat = pkgs.formats.json { };

  # What the module contributes, below what the operator writes in `settings`.
  moduleSettings = {
    stateDir = "/var/lib/homelab-deploy";
    # The system's own nix (same version as its nix-daemon); nix-store is
    # found next to it.
    build.nixBin = "${config.nix.package}/bin/nix";
    metrics.listen = "0.0.0.0:9973";
  }
  // common.credentialSettings unit cfg;
  settings = recursiveUpdate moduleSettings cfg.settings;
  configFile = settingsFormat.generate "homelab-deploy-builder.json" settings;

  stateDir = settings.stateDir;
  # Under /var/lib systemd creates and owns it (StateDirectory); elsewhere
  # tmpfiles creates it and the unit may write there (ReadWritePaths).
  stateInVarLib = hasPrefix "/var/lib/" stateDir;

  metricsPort = common.listenPort (settings.metrics.listen or null);

  # Created by the module only under its default names; any other user and
  # group are the operator's to define.
  defaultUser = "homelab-deploy";
in
{
  options.services.homelab-deploy.builder = {
    enable = mkEnableOption "the homelab-deploy builder, a Nix build service driven over NATS";

    package = common.packageOption pkgs "its `builder` command";

    user = mkOption {
      type = types.str;
      default = defaultUser;
      description = "System user the builder runs as. The module creates it when it is the default; another user must be defined elsewhere. It is added to nix's `extra-allowed-users`, not made a trusted user.";
    };

    group = mkOption {
      type = types.str;
      default = defaultUser;
      description = "Group of the builder's user. The module creates it when it is the default.";
    };

    settings = mkOption {
      type = settingsFormat.type;
      default = { };
      example = lib.literalExpression ''
        {
          nats.url = "nats://nats.example.org:4222";
          repos.nixos-servers.url = "git+https://git.example.org/infra/nixos-servers.git";
          repos.nixos.url = "git+https://git.example.org/infra/nixos.git";
          build.timeout = "1h";
        }
      '';
      description = ''
        The builder's configuration, with the keys of config.example.yaml,
        written to a JSON file. The module sets `stateDir`
        (/var/lib/homelab-deploy), `build.nixBin` (the system's nix),
        `metrics.listen` (0.0.0.0:9973) and the credential file paths; what
        is set here wins, except the credential files, which come from
        `nkeySeedFile` and `vault.*`.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the metrics port (from `settings.metrics.listen`, 9973 by default) in the firewall, for Prometheus and the status page.";
    };
  } // common.credentialOptions { who = "builder"; defaultSecretPath = "shared/homelab-deploy/builder-nkey"; };

  config = mkIf cfg.enable {
    assertions =
      common.credentialAssertions {
        prefix = "services.homelab-deploy.builder";
        cred = cfg;
        address = settings.vault.address or null;
      }
      ++ common.settingsAssertions {
        prefix = "services.homelab-deploy.builder";
        operatorSettings = cfg.settings;
        inherit settings;
        inherit (cfg) openFirewall;
      }
      ++ [
        {
          assertion = (settings.repos or { }) != { };
          message = "services.homelab-deploy.builder.settings.repos: expected at least one repo, e.g. repos.nixos-servers.url = \"git+https://…\".";
        }
      ]
      ++ map (name: {
        assertion = common.isValidRepoName name;
        message = "services.homelab-deploy.builder.settings.repos.${name}: invalid repo name; expected ${common.repoNameRule}.";
      }) (builtins.attrNames (settings.repos or { }));

    # Appended to whatever allowed-users says (nixpkgs' harmonia module lets
    # its user in the same way): the builder is an ordinary daemon client.
    nix.settings.extra-allowed-users = [ cfg.user ];

    users.users.${cfg.user} = mkIf (cfg.user == defaultUser) {
      isSystemUser = true;
      group = cfg.group;
      home = stateDir;
      description = "homelab-deploy builder";
    };
    users.groups.${cfg.group} = mkIf (cfg.group == defaultUser) { };

    networking.firewall.allowedTCPPorts = optional cfg.openFirewall metricsPort;

    systemd.tmpfiles.rules = optional (!stateInVarLib) "d ${stateDir} 0750 ${cfg.user} ${cfg.group} - -";

    systemd.services.${unit} = {
      description = "homelab-deploy builder: Nix builds requested over NATS";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      # Every build goes through the nix daemon: without its socket there is nothing to do.
      requires = [ "nix-daemon.socket" ];
      after = [ "network-online.target" "nix-daemon.socket" ];
      # git: nix runs it to fetch git+https/git+ssh flakes.
      path = [ config.nix.package pkgs.git ];
      environment = {
        HOME = stateDir;
        # nix's fetcher and evaluation caches (~/.cache/nix otherwise).
        XDG_CACHE_HOME = "/var/cache/${unit}";
        # Always the daemon, never a local store: the service user cannot write /nix.
        NIX_REMOTE = "daemon";
        # Flakes for this service only, whatever the system's nix.conf says.
        NIX_CONFIG = "extra-experimental-features = nix-command flakes";
      };
      # A fatal problem (bad Vault credentials, a key NATS keeps refusing)
      # restarts 5 times in ten minutes, then the unit stays failed.
      startLimitIntervalSec = 600;
      startLimitBurst = 5;
      serviceConfig = common.hardening // {
        Type = "exec";
        User = cfg.user;
        Group = cfg.group;
        ExecStart = "${lib.getExe cfg.package} builder --config ${configFile}";
        Restart = "on-failure";
        RestartSec = "10s";
        # SIGTERM to the daemon alone: it stops nix itself, saves the queue and
        # tells requesters within 10 s (a nix killed by systemd at the same
        # moment would look like a failed host). KillMode=mixed then sends
        # SIGKILL to anything left in the cgroup, nix and git included.
        KillMode = "mixed";
        KillSignal = "SIGTERM";
        TimeoutStopSec = "30s";
        # An OOM-killed nix evaluation worker costs one host, not the
        # daemon: the daemon reports it and a fresh worker goes on. The
        # ceiling itself is the operator's serviceConfig.MemoryMax (NixOS's
        # own option; docs/deployment.md, "Memory").
        OOMPolicy = "continue";
        LoadCredential = common.loadCredential cfg;
        CacheDirectory = unit;
        CacheDirectoryMode = "0750";
        # The nix daemon's socket: connecting needs it reachable, nothing else under /nix is written.
        ReadWritePaths = [ "/nix/var/nix/daemon-socket" ] ++ optional (!stateInVarLib) stateDir;
      }
      // optionalAttrs stateInVarLib {
        StateDirectory = removePrefix "/var/lib/" stateDir;
        StateDirectoryMode = "0750";
      };
    };
  };
}
