# package-lock.json as importNpmLock needs it: every registry package with a
# `resolved` URL. Lockfiles written with npm's omit-lockfile-registry-resolved
# (or by registries that leave it out) record only `version` and
# `integrity` for registry packages, and importNpmLock fetches nothing for
# an entry without `resolved`, so npm would try the network in the sandbox.
# The tarball URL of a registry package is fixed by the registry's layout:
#   <registry>/<name>/-/<name without @scope/>-<version>.tgz
# and fetchurl checks it against the lockfile's `integrity` hash, so a wrong
# URL fails the build instead of building something else.
#
# Pure Nix (builtins only), so test/nixos/package.test.ts evaluates it on the
# repository's own lockfile without nixpkgs.
{ registry ? "https://registry.npmjs.org" }:
lockfile:
let
  inherit (builtins) elemAt length mapAttrs match split filter isString;

  # "node_modules/a/node_modules/@s/b" -> "@s/b": the last node_modules/ segment.
  nameFromKey = key:
    let parts = filter isString (split "node_modules/" key);
    in elemAt parts (length parts - 1);

  unscoped = name:
    let m = match "@[^/]+/(.+)" name;
    in if m == null then name else elemAt m 0;

  tarballUrl = name: version: "${registry}/${name}/-/${unscoped name}-${version}.tgz";

  # Registry packages only: the root ("" key), workspace links, and entries
  # that already say where they come from are left as they are.
  needsUrl = key: pkg:
    key != "" && !(pkg ? resolved) && !(pkg.link or false) && !(pkg.inBundle or false)
    && pkg ? version && pkg ? integrity;

  withUrl = key: pkg:
    if needsUrl key pkg
    then pkg // { resolved = tarballUrl (pkg.name or (nameFromKey key)) pkg.version; }
    else pkg;
in
lockfile // { packages = mapAttrs withUrl (lockfile.packages or { }); }
