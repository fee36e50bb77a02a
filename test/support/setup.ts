// Every nix the tests start (directly or through the builder) runs offline,
// without a sandbox, with flakes enabled: the machines CI runs on have no network.
process.env["NIX_CONFIG"] = ["experimental-features = nix-command flakes", "sandbox = false", "substituters ="].join("\n");
