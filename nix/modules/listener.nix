# services.homelab-deploy.listener: `homelab-deploy listener` on a NixOS
# host, so the deployer can switch it to the closure the builder built.
# `settings` is the listener's config, written as JSON; the module adds the
# host, tier, roles, repo, health, rollback, state directory and the
# credentials from the typed options. See docs/deployment.md, "The deploy
# listener".
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption mkEnableOption mkIf types optional optionalAttrs recursiveUpdate hasPrefix removePrefix;
  common = import ./common.nix { inherit lib; };

  cfg = config.services.homelab-deploy.listener;
  unit = "homelab-deploy-listener";
  settingsFormat = pkgs.formats.json { };

  # What the module contributes, below what the operator writes in `settings`.
  moduleSettings = {
    inherit (cfg) host tier roles rollback;
    repo = { inherit (cfg.repo) name url; };
    stateDir = "/var/lib/${unit}";
    # The system's own nix (the nix-daemon's version) realises, builds and sets the profile.
    nixBin = "${config.nix.package}/bin/nix";
    metrics.listen = "0.0.0.0:9972";
    # The unit file the listener watches: when a switch changes it, the
    # listener exits after its final answer and systemd (Restart=always)
    # starts the new version (the unit is not restarted by the switch).
    selfUnit = "/etc/systemd/system/${unit}.service";
    health = optionalAttrs (cfg.health.commands != null) { inherit (cfg.health) commands; }
      // optionalAttrs (cfg.health.timeout != null) { inherit (cfg.health) timeout; }
      // optionalAttrs (cfg.health.confirmTimeout != null) { inherit (cfg.health) confirmTimeout; };
  }
  // common.credentialSettings unit cfg;
  settings = recursiveUpdate moduleSettings cfg.settings;
  configFile = settingsFormat.generate "${unit}.json" settings;

  stateDir = settings.stateDir;
  stateInVarLib = hasPrefix "/var/lib/" stateDir;

  metricsPort = common.listenPort (settings.metrics.listen or null);

  # The protocol's patterns (src/protocol.ts): hosts and roles as the
  # builder's host names, tiers lower-case words.
  hostPattern = "[A-Za-z0-9]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?";
  tierPattern = "[a-z][a-z0-9-]*";
in
{
  options.services.homelab-deploy.listener = {
    enable = mkEnableOption "the homelab-deploy deploy listener, which switches this host to the systems the deployer sends over NATS";

    package = common.packageOption pkgs "its `listener` command";

    host = mkOption {
      type = types.strMatching hostPattern;
      default = config.networking.hostName;
      defaultText = lib.literalExpression "config.networking.hostName";
      description = "This host's name in the fleet: the `<host>` of `deploy.<tier>.<host>` and of `nixosConfigurations.<host>` in the repo. A prebuilt system is accepted only if its name is `nixos-system-<host>-…`.";
    };

    tier = mkOption {
      type = types.strMatching tierPattern;
      example = "prod";
      description = "The host's tier (`test`, `prod`, …): it listens on `deploy.<tier>.>`, and its NATS user may subscribe to that tier only.";
    };

    roles = mkOption {
      type = types.listOf (types.strMatching hostPattern);
      default = [ ];
      example = [ "dns" ];
      description = "Roles of the host: `homelab-deploy deploy <tier> role:<role>` reaches every host of the tier with that role (`deploy.<tier>.role.<role>`).";
    };

    repo = {
      name = mkOption {
        type = types.strMatching "[A-Za-z0-9][A-Za-z0-9_-]{0,62}";
        example = "nixos-servers";
        description = "The builder's name for the repo holding this host's configuration (a key of the builder's `settings.repos`); the deployer asks the builder's history under it for the host's newest build.";
      };
      url = mkOption {
        type = types.str;
        example = "git+https://git.example.org/infra/nixos-servers.git";
        description = "Flake URL of that repo, for a deploy without a prebuilt system: the listener then builds `<url>#nixosConfigurations.<host>.config.system.build.toplevel` itself, as `nixos-rebuild --flake` does.";
      };
    };

    health = {
      commands = mkOption {
        type = types.nullOr (types.listOf (types.listOf types.str));
        default = null;
        example = [ [ "systemctl" "is-active" "unbound.service" ] ];
        description = "Commands (argv lists, no shell) that must all succeed after a `switch` or `test` for the host to count as healthy; otherwise it rolls back. `null`: the listener's default, that systemd reports no failed units.";
      };
      timeout = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "2m";
        description = "How long the health commands may take together. `null`: the listener's default.";
      };
      confirmTimeout = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "90s";
        description = "How long after the switch the listener must reach NATS again; otherwise it rolls back. `null`: the listener's default (90 s).";
      };
    };

    rollback = mkOption {
      type = types.bool;
      default = true;
      description = "Roll back to the previous system when the switch or the health checks fail. `false`: report the failure and leave the system as it is.";
    };

    settings = mkOption {
      type = settingsFormat.type;
      default = { };
      example = lib.literalExpression ''
        {
          nats.url = "nats://nats.example.org:4222";
          log.level = "debug";
        }
      '';
      description = ''
        The listener's configuration, written to a JSON file. The module
        sets `host`, `tier`, `roles`, `repo`, `health`, `rollback` from the
        options above, `stateDir` (/var/lib/homelab-deploy-listener),
        `metrics.listen` (0.0.0.0:9972), `selfUnit` and the credential file
        paths; what is set here wins, except the credential files, which
        come from `nkeySeedFile` and `vault.*`. `nats.url` is required.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the metrics port (from `settings.metrics.listen`, 9972 by default) in the firewall, for Prometheus.";
    };
  } // common.credentialOptions {
    who = "listener";
    defaultSecretPath = "shared/homelab-deploy/listener-${cfg.tier}-nkey";
    defaultSecretPathText = "shared/homelab-deploy/listener-<tier>-nkey";
  };

  config = mkIf cfg.enable {
    assertions =
      common.credentialAssertions {
        prefix = "services.homelab-deploy.listener";
        cred = cfg;
        address = settings.vault.address or null;
      }
      ++ common.settingsAssertions {
        prefix = "services.homelab-deploy.listener";
        operatorSettings = cfg.settings;
        inherit settings;
        inherit (cfg) openFirewall;
      };

    networking.firewall.allowedTCPPorts = optional cfg.openFirewall metricsPort;

    systemd.tmpfiles.rules = optional (!stateInVarLib) "d ${stateDir} 0700 root root - -";

    systemd.services.${unit} = {
      description = "homelab-deploy listener: switches this host to the systems deployed over NATS";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" "nix-daemon.socket" ];
      # A switch must not stop or restart the listener in the middle of the
      # deploy it is answering: the listener itself exits after its final
      # answer when the unit changed (selfUnit), and Restart=always brings
      # up the new version.
      restartIfChanged = false;
      stopIfChanged = false;
      # nix realises and builds systems, git fetches git+https flakes,
      # systemctl is the default health check.
      path = [ config.nix.package pkgs.git config.systemd.package ];
      environment = {
        # Realise and build through the nix daemon, with the system's
        # substituters and trusted keys, as nixos-rebuild does.
        NIX_REMOTE = "daemon";
        NIX_CONFIG = "extra-experimental-features = nix-command flakes";
      };
      unitConfig = {
        StartLimitIntervalSec = "10min";
        StartLimitBurst = 5;
      };
      # Root and no hardening: it switches the whole system (profile,
      # bootloader, every unit), which nothing less than root may do.
      serviceConfig = {
        Type = "exec";
        ExecStart = "${cfg.package}/bin/homelab-deploy listener --config ${configFile}";
        Restart = "always";
        RestartSec = "5s";
        # SIGTERM to the listener alone: it saves the deploy in flight and
        # answers it after the restart; a switch-to-configuration it runs
        # is left to finish rather than killed half-way.
        KillMode = "process";
        TimeoutStopSec = "30s";
        LoadCredential = common.loadCredential cfg;
      }
      // optionalAttrs stateInVarLib {
        StateDirectory = removePrefix "/var/lib/" stateDir;
        StateDirectoryMode = "0700";
      };
    };
  };
}
