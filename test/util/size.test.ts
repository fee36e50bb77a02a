import { describe, expect, it } from "vitest";
import { formatSize, parseSize } from "../../src/util/size.js";

describe("sizes", () => {
  it("reads sizes as systemd's MemoryMax= does (K, M, G, T are powers of 1024)", () => {
    expect(parseSize("2GiB")).toBe(2 * 1024 ** 3);
    expect(parseSize("2G")).toBe(2 * 1024 ** 3);
    expect(parseSize("512MiB")).toBe(512 * 1024 ** 2);
    expect(parseSize("1.5g")).toBe(1.5 * 1024 ** 3);
    expect(parseSize(" 64 KiB ")).toBe(64 * 1024);
    expect(parseSize("1000")).toBe(1000);
    expect(parseSize(4096)).toBe(4096);
  });

  it("refuses what is not a size", () => {
    for (const text of ["", "lots", "2 GB ram", "-1G", "1.2.3M", "2PiB"]) expect(parseSize(text), text).toBeUndefined();
    expect(parseSize(Number.NaN)).toBeUndefined();
  });

  it("formats sizes for log lines", () => {
    expect(formatSize(2 * 1024 ** 3)).toBe("2GiB");
    expect(formatSize(276.4 * 1024 ** 2)).toBe("276.4MiB");
    expect(formatSize(1024)).toBe("1KiB");
    expect(formatSize(100)).toBe("100B");
  });

  it("formats sizes for people with a space and fixed decimals per unit", () => {
    expect(formatSize(1.2 * 1024 ** 2, "display")).toBe("1.2 MiB");
    expect(formatSize(60_000, "display")).toBe("59 KiB");
    expect(formatSize(300, "display")).toBe("0 KiB");
    expect(formatSize(1.5 * 1024 ** 3, "display")).toBe("1.50 GiB");
    expect(formatSize(1024 ** 2, "display")).toBe("1.0 MiB");
  });
});
