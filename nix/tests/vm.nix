# checks.<system>.vm: a NixOS VM with nats-server configured with the plan's
# DEPLOY account users, the builder (seed file, hardened unit) on a local
# flake, and the scheduled build. Needs KVM and nixpkgs: run with
# `nix flake check` or `nix build .#checks.x86_64-linux.vm`.
{ pkgs, module, package }:
let
  keys = import ./keys.nix;
  system = pkgs.stdenv.hostPlatform.system;
  demoFlake = pkgs.writeText "flake.nix" (builtins.replaceStrings [ "@SYSTEM@" ] [ system ] (builtins.readFile ./vm-flake.nix));
  natsUrl = "nats://127.0.0.1:4222";
  # docs/nats-permissions.md
  user = key: publish: subscribe: {
    nkey = key.publicKey;
    permissions = {
      publish.allow = publish;
      subscribe.allow = subscribe;
    };
  };
in
pkgs.testers.runNixOSTest {
  name = "homelab-deploy";

  nodes.machine = { lib, ... }: {
    imports = [ module ];
    virtualisation.memorySize = 2048;

    # Offline: no substituters; flakes come from local git repos.
    nix.settings.substituters = lib.mkForce [ ];

    services.nats = {
      enable = true;
      settings.accounts.DEPLOY.users = [
        (user keys.builder [ "build.responses.>" ] [ "build.>" ])
        (user keys.deployer [ "deploy.test.>" "deploy.discover" "build.>" ] [ "deploy.responses.>" "deploy.discover" "build.responses.>" ])
        (user keys.scheduler [ "build.>" ] [ "build.responses.>" ])
      ];
    };

    # Readable by root only: the units get them through LoadCredential.
    environment.etc = lib.mapAttrs' (who: key: lib.nameValuePair "homelab-deploy-test/${who}.nk" {
      text = key.seed;
      mode = "0400";
    }) keys;

    services.homelab-deploy.builder = {
      enable = true;
      inherit package;
      openFirewall = true;
      nkeySeedFile = "/etc/homelab-deploy-test/builder.nk";
      settings = {
        nats.url = natsUrl;
        repos.demo.url = "git+file:///srv/demo";
        build.timeout = "5m";
      };
    };

    services.homelab-deploy.scheduledBuilds = {
      enable = true;
      inherit package natsUrl;
      repos = [ "demo" ];
      nkeySeedFile = "/etc/homelab-deploy-test/scheduler.nk";
    };

    environment.systemPackages = [ package pkgs.curl pkgs.git pkgs.jq ];
    system.stateVersion = "25.05";
  };

  testScript = ''
    import json

    def as_repo_owner(command):
        return machine.succeed(f"runuser -u homelab-deploy -- env HOME=/var/lib/homelab-deploy sh -c 'cd /srv/demo && {command}'")

    def client_build(target):
        out = machine.succeed(
            f"homelab-deploy build demo {target} --json --nats-url ${natsUrl}"
            " --nkey-seed-file /etc/homelab-deploy-test/deployer.nk"
        )
        messages = [json.loads(line) for line in out.splitlines() if line.strip()]
        return next(m for m in messages if m["type"] == "completed")

    start_all()
    machine.wait_for_unit("nats.service")
    machine.wait_for_unit("homelab-deploy-builder.service")

    with subtest("the unit runs as its own user, hardened, with its state directory"):
        assert machine.succeed("systemctl show -p User --value homelab-deploy-builder").strip() == "homelab-deploy"
        assert machine.succeed("systemctl show -p ProtectSystem --value homelab-deploy-builder").strip() == "strict"
        machine.succeed("stat -c %U /var/lib/homelab-deploy | grep -x homelab-deploy")
        machine.succeed("ps -o user:32= -p $(systemctl show -p MainPID --value homelab-deploy-builder) | grep -x homelab-deploy")
        machine.wait_until_succeeds("curl -sf http://127.0.0.1:9973/readyz", timeout=60)
        print(machine.succeed("systemd-analyze security homelab-deploy-builder.service | tail -n 1"))

    with subtest("a local flake repo owned by the builder's user"):
        machine.succeed("install -d -o homelab-deploy -g homelab-deploy /srv/demo")
        as_repo_owner("cp ${demoFlake} flake.nix && chmod u+w flake.nix && git init -q -b main && git add flake.nix"
                      " && git -c user.name=test -c user.email=test@example.org commit -q -m demo")

    with subtest("homelab-deploy build builds every host through the nix daemon"):
        completed = client_build("all")
        assert completed["status"] == "success", completed
        assert sorted(r["host"] for r in completed["results"]) == ["alpha", "beta"], completed
        for result in completed["results"]:
            machine.succeed(f"test -e {result['storePath']}")
        machine.succeed("curl -sf http://127.0.0.1:9973/metrics | grep 'homelab_deploy_builds_total{repo=\"demo\",status=\"success\"} 1'")

    with subtest("the scheduled build succeeds, and fails the unit once a host is broken"):
        machine.succeed("systemctl list-timers homelab-deploy-scheduled-build.timer | grep homelab-deploy-scheduled-build")
        machine.succeed("systemctl start homelab-deploy-scheduled-build.service")
        as_repo_owner("touch broken && git add broken && git -c user.name=test -c user.email=test@example.org commit -q -m break")
        machine.fail("systemctl start homelab-deploy-scheduled-build.service")
        assert machine.succeed("systemctl show -p Result --value homelab-deploy-scheduled-build").strip() == "exit-code"
        machine.succeed("journalctl -u homelab-deploy-scheduled-build | grep 'scheduled build: demo failed (exit code 1)'")

    with subtest("the builder stops within its time and leaves nothing behind"):
        machine.succeed("timeout 20 systemctl stop homelab-deploy-builder.service")
        machine.fail("pgrep -u homelab-deploy")
  '';
}
