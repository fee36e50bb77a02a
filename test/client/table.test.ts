import { describe, expect, it } from "vitest";
import { formatTable } from "../../src/client/table.js";

const header = ["HOST", "STATUS", "RESULT"];
const rows = [
  ["ns1", "success", "/nix/store/abc-nixos-system-ns1"],
  ["testvm01", "failure", ""],
];
const colour = { column: 1, paint: (color: string, text: string) => `<${color}:${text}>`, colourOf: (cell: string) => (cell === "success" ? "green" : "red") as "green" | "red" };

describe("formatTable", () => {
  it("aligns columns two spaces apart, without padding the last or trailing blanks", () => {
    expect(formatTable(header, rows)).toEqual([
      "HOST      STATUS   RESULT",
      "ns1       success  /nix/store/abc-nixos-system-ns1",
      "testvm01  failure",
    ]);
  });

  it("cuts lines to the width and colours a column after cutting, never a cell the cut reached", () => {
    expect(formatTable(header, rows, { width: 24, colour })).toEqual(["HOST      STATUS   RES…", "ns1       <green:success>  /ni…", "testvm01  <red:failure>"]);
    expect(formatTable(header, rows, { width: 16, colour })).toEqual(["HOST      STAT…", "ns1       succ…", "testvm01  fail…"]);
  });
});
