# What the builder, listener and scheduled-builds modules share: the package default,
# repo-name rules, the NKey credential options (a seed file, or Vault) and
# how they reach the service (systemd LoadCredential), and the hardening
# both units get. docs/deployment.md explains each setting.
{ lib }:
let
  inherit (lib) mkOption types hasPrefix;
in
rec {
  # The package built from this repository with the host's own nixpkgs,
  # unless an overlay (overlays.default of the flake) provides one.
  packageOption = pkgs: what: mkOption {
    type = types.package;
    default = pkgs.homelab-deploy or (pkgs.callPackage ../package.nix { });
    defaultText = lib.literalExpression "pkgs.homelab-deploy or (pkgs.callPackage <homelab-deploy>/nix/package.nix { })";
    description = "The homelab-deploy package (${what}).";
  };

  # The protocol's repo names (src/protocol.ts): letters, digits, "-" and
  # "_", at most 63, not starting with "-" or "_", not a reserved subject token.
  reservedRepoNames = [ "responses" "discover" "status" "cancel" "history" ];
  isValidRepoName = name:
    builtins.match "[A-Za-z0-9][A-Za-z0-9_-]{0,62}" name != null && !(builtins.elem name reservedRepoNames);
  repoNameRule = ''letters, digits, "-" and "_" (at most 63, not starting with "-" or "_"), not one of ${lib.concatStringsSep ", " reservedRepoNames}'';

  credentialsDir = unit: "/run/credentials/${unit}.service";

  # Where the NKey seed comes from: exactly one of a seed file and Vault.
  # `defaultSecretPathText`: how the docs show a default computed from
  # other options (the listener's depends on its tier).
  credentialOptions = { who, defaultSecretPath, defaultSecretPathText ? null }: {
    nkeySeedFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/homelab-deploy/${who}.nkey";
      description = ''
        File holding the ${who}'s NATS user NKey seed (`SU…`). An absolute
        path as a string, not a Nix path (which would copy the secret into
        the world-readable store). systemd reads it as root and hands the
        service a private copy (LoadCredential), so it may stay readable by
        root only. Exactly one of this and `vault.roleIdFile`/`vault.secretIdFile`.
      '';
    };
    vault = {
      address = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "https://vault.example.org:8200";
        description = "Vault's URL (the unit has no VAULT_ADDR).";
      };
      caCertFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/etc/ssl/certs/homelab-root-ca.pem";
        description = "PEM file with the CA that signed Vault's certificate; it must be readable by the service (it is not a secret). Default: the system's CAs.";
      };
      roleIdFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/var/lib/vault/approle/role-id";
        description = "The host's AppRole role-id file, as the provisioning writes it. Passed with LoadCredential, like the secret-id file. Setting it (and `secretIdFile`) selects Vault as the NKey source.";
      };
      secretIdFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/var/lib/vault/approle/secret-id";
        description = "The host's AppRole secret-id file.";
      };
      kvMount = mkOption {
        type = types.str;
        default = "secret";
        description = "The KV version 2 mount holding the seed.";
      };
      secretPath = mkOption ({
        type = types.str;
        default = defaultSecretPath;
        description = "Path of the ${who}'s seed in the mount.";
      } // lib.optionalAttrs (defaultSecretPathText != null) { defaultText = defaultSecretPathText; });
      secretField = mkOption {
        type = types.str;
        default = "nkey";
        description = "Field of the secret holding the seed.";
      };
    };
  };

  usesVault = cred: cred.vault.roleIdFile != null || cred.vault.secretIdFile != null;

  # The files the service reads, inside its credentials directory.
  credentialFiles = unit: {
    seed = "${credentialsDir unit}/nkey-seed";
    roleId = "${credentialsDir unit}/vault-role-id";
    secretId = "${credentialsDir unit}/vault-secret-id";
  };

  # The credential part of a daemon's rendered settings: the copies systemd
  # hands the unit (LoadCredential), and where in Vault the seed is.
  credentialSettings = unit: cred:
    let files = credentialFiles unit; in
    lib.optionalAttrs (cred.nkeySeedFile != null) { nats.nkeySeedFile = files.seed; }
    // lib.optionalAttrs (usesVault cred) {
      vault = {
        roleIdFile = files.roleId;
        secretIdFile = files.secretId;
        inherit (cred.vault) kvMount secretPath secretField;
      }
      // lib.optionalAttrs (cred.vault.address != null) { inherit (cred.vault) address; }
      // lib.optionalAttrs (cred.vault.caCertFile != null) { inherit (cred.vault) caCertFile; };
    };

  # The port of a "host:port" listen setting ("[::]:9973" too); null without one.
  listenPort = listen:
    let m = builtins.match "(\\[[^]]*]|[^:]*):([0-9]+)" (if builtins.isString listen then listen else "");
    in if m == null then null else lib.toInt (builtins.elemAt m 1);

  # What a daemon's module asserts about its rendered settings: credential
  # files only through the options, a state directory of its own, a fixed
  # metrics port when the firewall is to be opened for it.
  settingsAssertions = { prefix, operatorSettings, settings, openFirewall }:
    let
      given = operatorSettings;
      credentialKeys =
        lib.optional ((given.nats or { }) ? nkeySeedFile) "nats.nkeySeedFile"
        ++ lib.optional ((given.vault or { }) ? roleIdFile) "vault.roleIdFile"
        ++ lib.optional ((given.vault or { }) ? secretIdFile) "vault.secretIdFile";
      stateDir = settings.stateDir;
      port = listenPort (settings.metrics.listen or null);
    in
    [
      {
        assertion = credentialKeys == [ ];
        message = "${prefix}.settings: set the NKey files with ${prefix}.nkeySeedFile or vault.roleIdFile/vault.secretIdFile (the module passes them with LoadCredential), not with ${lib.concatStringsSep ", " credentialKeys}.";
      }
      {
        assertion = builtins.isString stateDir && hasPrefix "/" stateDir && stateDir != "/var/lib/" && stateDir != "/";
        message = "${prefix}.settings.stateDir: expected an absolute directory path of its own, got ${builtins.toJSON stateDir}.";
      }
      {
        assertion = !openFirewall || (port != null && port > 0);
        message = "${prefix}.openFirewall: settings.metrics.listen (${builtins.toJSON (settings.metrics.listen or null)}) has no fixed port to open.";
      }
    ];

  # systemd LoadCredential= lines, "id:file", for the files that are set.
  loadCredential = cred:
    lib.mapAttrsToList (id: file: "${id}:${file}") (lib.filterAttrs (_: file: file != null) {
      nkey-seed = cred.nkeySeedFile;
      vault-role-id = if usesVault cred then cred.vault.roleIdFile else null;
      vault-secret-id = if usesVault cred then cred.vault.secretIdFile else null;
    });

  # `address`: the Vault address from wherever the service gets it (the
  # option, or for the builder also settings.vault.address).
  credentialAssertions = { prefix, cred, address }:
    let
      files = lib.filterAttrs (_: file: file != null) {
        nkeySeedFile = cred.nkeySeedFile;
        "vault.roleIdFile" = cred.vault.roleIdFile;
        "vault.secretIdFile" = cred.vault.secretIdFile;
        "vault.caCertFile" = cred.vault.caCertFile;
      };
    in
    [
      {
        assertion = (cred.nkeySeedFile != null) != (usesVault cred);
        message = "${prefix}: give exactly one NKey source: nkeySeedFile, or vault.roleIdFile and vault.secretIdFile.";
      }
      {
        assertion = usesVault cred -> (cred.vault.roleIdFile != null && cred.vault.secretIdFile != null);
        message = "${prefix}.vault: roleIdFile and secretIdFile go together (AppRole login needs both).";
      }
      {
        assertion = usesVault cred -> address != null;
        message = "${prefix}.vault.address: required with Vault (the unit has no VAULT_ADDR).";
      }
    ]
    ++ lib.mapAttrsToList (name: file: {
      assertion = hasPrefix "/" file;
      message = "${prefix}.${name}: expected an absolute path, got \"${file}\".";
    }) files;

  # Hardening the builder's and the scheduler's units share (the listener
  # runs as root, unhardened: it switches the system); docs/deployment.md
  # says why each is safe. PrivateUsers is set: the nix daemon learns its
  # client's uid from the kernel (SO_PEERCRED), which reports it as the
  # daemon's namespace sees it, the real one; nixpkgs' harmonia module runs
  # the same way. Not set: MemoryDenyWriteExecute (Node's V8 JIT needs
  # writable and executable memory and would crash), PrivateNetwork (NATS,
  # Vault and git are on the network), ProcSubset=pid (libuv reads
  # /proc/stat and /proc/meminfo; untested with nix and git).
  hardening = {
    NoNewPrivileges = true;
    PrivateUsers = true;
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    ProtectProc = "invisible";
    RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" "AF_NETLINK" ];
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    RemoveIPC = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [ "@system-service" "~@privileged" ];
    SystemCallErrorNumber = "EPERM";
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    UMask = "0027";
  };
}
