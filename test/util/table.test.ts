import { describe, expect, it } from "vitest";
import { textTable } from "../../src/util/table.js";

const header = ["HOST", "STATUS", "RESULT"];
const rows = [
  ["ns1", "success", "/nix/store/abc-nixos-system-ns1"],
  ["testvm01", "failure", ""],
];

describe("textTable", () => {
  it("aligns columns two spaces apart, without padding the last or trailing blanks", () => {
    expect(textTable(header, rows)).toEqual([
      "HOST      STATUS   RESULT",
      "ns1       success  /nix/store/abc-nixos-system-ns1",
      "testvm01  failure",
    ]);
  });

  it("cuts lines to the width and paints body cells after cutting, never one the cut reached", () => {
    const paint = (column: number, cell: string) => (column === 1 ? `<${cell}>` : cell);
    expect(textTable(header, rows, { width: 24, paint })).toEqual(["HOST      STATUS   RES…", "ns1       <success>  /ni…", "testvm01  <failure>"]);
    expect(textTable(header, rows, { width: 16, paint })).toEqual(["HOST      STAT…", "ns1       succ…", "testvm01  fail…"]);
  });
});
