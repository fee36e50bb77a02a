# homelab-deploy, the CLI (builder daemon, build client, MCP server), built
# from this repository with buildNpmPackage.
#
# Dependencies come from package-lock.json through importNpmLock: one
# fetchurl per package, each checked against the lockfile's own integrity
# hash, so there is no npmDepsHash to keep in step with the lockfile.
# Updating a dependency is `npm install …` and committing package.json and
# package-lock.json; nothing in this file changes (docs/deployment.md).
{
  lib,
  buildNpmPackage,
  importNpmLock,
  nodejs_22,
  nix,
  git,
}:
let
  packageJson = lib.importJSON ../package.json;
  # Registry packages get their tarball URL back where the lockfile left it out.
  packageLock = import ./npm-lock.nix { } (lib.importJSON ../package-lock.json);
in
buildNpmPackage {
  pname = packageJson.name;
  inherit (packageJson) version;

  # Only what the build and the installed package need: tests, benchmarks,
  # examples and the flake itself stay out, so editing them rebuilds nothing.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../package.json
      ../package-lock.json
      ../tsconfig.json
      ../src
      ../README.md
      ../config.example.yaml
      ../docs
      ../monitoring
    ];
  };

  nodejs = nodejs_22;

  npmDeps = importNpmLock {
    package = packageJson;
    inherit packageLock;
  };
  npmConfigHook = importNpmLock.npmConfigHook;

  # Only a devDependency (esbuild, under vitest) has an install script; the
  # build needs none of them.
  npmRebuildFlags = [ "--ignore-scripts" ];

  # `npm run build` (tsc -p tsconfig.json) writes dist/. The install hook then
  # copies what `npm pack` would publish (package.json "files": dist, docs,
  # monitoring, config.example.yaml, README.md), prunes node_modules to the
  # production dependencies (typescript, vitest and the rest of the
  # devDependencies are left out), and writes bin/homelab-deploy, a
  # makeWrapper script running dist/cli.js with this nodejs.
  npmBuildScript = "build";

  # The builder runs nix and nix-store (next to build.nixBin, else from
  # PATH) and nix runs git to fetch git+https flakes. --suffix: a PATH the
  # caller sets (the NixOS module puts the system's own nix first) wins;
  # these are the fallback, so the package works on its own too.
  makeWrapperArgs = [
    "--suffix"
    "PATH"
    ":"
    (lib.makeBinPath [
      nix
      git
    ])
    # Smaller V8 young generation: keeps the daemon's memory bounded under a
    # nix log flood (package.json "homelab-deploy".nodeOptions says why).
    "--prefix"
    "NODE_OPTIONS"
    " "
    packageJson."homelab-deploy".nodeOptions
  ];

  doInstallCheck = true;
  installCheckPhase = ''
    runHook preInstallCheck
    $out/bin/homelab-deploy --version | grep -Fx ${lib.escapeShellArg packageJson.version}
    $out/bin/homelab-deploy build --help > /dev/null
    # The devDependencies must not be needed at run time, nor shipped.
    test ! -e $out/lib/node_modules/homelab-deploy/node_modules/typescript
    test ! -e $out/lib/node_modules/homelab-deploy/node_modules/vitest
    runHook postInstallCheck
  '';

  meta = {
    description = packageJson.description;
    license = lib.licenses.mit;
    mainProgram = "homelab-deploy";
    platforms = lib.platforms.linux;
  };
}
