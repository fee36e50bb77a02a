# services.homelab-deploy.scheduledBuilds: a timer that asks the builder to
# build every host of the listed repos (`homelab-deploy build <repo> all`),
# one repo after another, with the scheduler's own NATS identity. The plan's
# Phase 5: every 2 hours with 5 minutes of jitter. See docs/deployment.md.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption mkEnableOption mkIf types optional optionalAttrs escapeShellArgs concatStringsSep;
  common = import ./common.nix { inherit lib; };

  cfg = config.services.homelab-deploy.scheduledBuilds;
  unit = "homelab-deploy-scheduled-build";
  files = common.credentialFiles unit;
  builder = config.services.homelab-deploy.builder or { enable = false; };

  # Repo names are checked by the assertions below and passed as single
  # quoted words; nothing from the configuration is spliced into the script
  # unquoted. Every repo is built even when an earlier one failed; the unit
  # then fails with the worst exit code (1: a host did not build, 2: nothing
  # was built: rejected, no builder, NATS unreachable).
  script = pkgs.writeShellScript unit ''
    set -u
    worst=0
    for repo in ${escapeShellArgs cfg.repos}; do
      echo "scheduled build: $repo, all hosts"
      code=0
      ${escapeShellArgs [ (lib.getExe cfg.package) "build" ]} ${escapeShellArgs cfg.extraArgs} -- "$repo" all || code=$?
      if [ "$code" -ne 0 ]; then
        echo "scheduled build: $repo failed (exit code $code)" >&2
        if [ "$code" -gt "$worst" ]; then worst=$code; fi
      fi
    done
    exit "$worst"
  '';

  credentialEnvironment =
    optionalAttrs (cfg.nkeySeedFile != null) { HOMELAB_DEPLOY_NKEY_SEED_FILE = files.seed; }
    // optionalAttrs (common.usesVault cfg) ({
      HOMELAB_DEPLOY_VAULT_ROLE_ID_FILE = files.roleId;
      HOMELAB_DEPLOY_VAULT_SECRET_ID_FILE = files.secretId;
      HOMELAB_DEPLOY_VAULT_KV_MOUNT = cfg.vault.kvMount;
      HOMELAB_DEPLOY_VAULT_SECRET_PATH = cfg.vault.secretPath;
      HOMELAB_DEPLOY_VAULT_SECRET_FIELD = cfg.vault.secretField;
    }
    // optionalAttrs (cfg.vault.address != null) { HOMELAB_DEPLOY_VAULT_ADDR = cfg.vault.address; }
    // optionalAttrs (cfg.vault.caCertFile != null) { HOMELAB_DEPLOY_VAULT_CACERT = cfg.vault.caCertFile; });
in
{
  options.services.homelab-deploy.scheduledBuilds = {
    enable = mkEnableOption "scheduled builds of every host of some repos by the homelab-deploy builder";

    package = common.packageOption pkgs "its client, `homelab-deploy build`";

    repos = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "nixos-servers" "nixos" ];
      description = "Repos (keys of the builder's `repos`) to build, in this order, every host of each.";
    };

    natsUrl = mkOption {
      type = types.str;
      example = "nats://nats.example.org:4222";
      description = "NATS server URL (several: comma-separated).";
    };

    onCalendar = mkOption {
      type = types.str;
      default = "*-*-* 00/2:00:00";
      description = "When to build (systemd OnCalendar): by default every 2 hours, on even hours. A calendar timer with Persistent=true catches up a run missed while the machine was off.";
    };

    randomizedDelaySec = mkOption {
      type = types.str;
      default = "5min";
      description = "Random delay added to each run (systemd RandomizedDelaySec).";
    };

    timeout = mkOption {
      type = types.str;
      default = "4h";
      description = "Longest one run (all repos) may take before systemd stops it (TimeoutStartSec).";
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "--idle-timeout" "10m" ];
      description = "Extra options for every `homelab-deploy build`, one list element per argument.";
    };
  } // common.credentialOptions { who = "scheduler"; defaultSecretPath = "shared/homelab-deploy/scheduler-nkey"; };

  config = mkIf cfg.enable {
    assertions =
      common.credentialAssertions {
        prefix = "services.homelab-deploy.scheduledBuilds";
        cred = cfg;
        address = cfg.vault.address;
      }
      ++ [
        {
          assertion = cfg.repos != [ ];
          message = "services.homelab-deploy.scheduledBuilds.repos: expected at least one repo to build.";
        }
      ]
      ++ map (name: {
        assertion = common.isValidRepoName name;
        message = "services.homelab-deploy.scheduledBuilds.repos: invalid repo name ${builtins.toJSON name}; expected ${common.repoNameRule}.";
      }) cfg.repos
      ++ map (name: {
        assertion = !builder.enable || builtins.hasAttr name (builder.settings.repos or { });
        message = "services.homelab-deploy.scheduledBuilds.repos: ${builtins.toJSON name} is not a repo of services.homelab-deploy.builder.settings.repos on this host.";
      }) cfg.repos;

    systemd.services.${unit} = {
      description = "homelab-deploy: build every host of ${concatStringsSep ", " cfg.repos}";
      # A switch of this host to a new configuration (which the running
      # build may well have triggered) must not kill the run: the client
      # rides through the builder's own restart, and the new unit applies
      # from the next timer event.
      restartIfChanged = false;
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ] ++ optional builder.enable "homelab-deploy-builder.service";
      environment = { HOMELAB_DEPLOY_NATS_URL = cfg.natsUrl; } // credentialEnvironment;
      serviceConfig = common.hardening // {
        Type = "oneshot";
        ExecStart = "${script}";
        # Needs nothing on disk but its credentials, which LoadCredential hands over.
        DynamicUser = true;
        LoadCredential = common.loadCredential cfg;
        TimeoutStartSec = cfg.timeout;
      };
    };

    systemd.timers.${unit} = {
      description = "homelab-deploy: scheduled builds of ${concatStringsSep ", " cfg.repos}";
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnCalendar = cfg.onCalendar;
        RandomizedDelaySec = cfg.randomizedDelaySec;
        Persistent = true;
      };
    };
  };
}
