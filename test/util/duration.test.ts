import { describe, expect, it } from "vitest";
import { formatDuration, formatSetting, parseDuration } from "../../src/util/duration.js";

describe("parseDuration", () => {
  it("reads the forms operators write", () => {
    expect(parseDuration("1h")).toBe(3_600_000);
    expect(parseDuration("1h30m")).toBe(5_400_000);
    expect(parseDuration("90s")).toBe(90_000);
    expect(parseDuration("500ms")).toBe(500);
    expect(parseDuration("2d")).toBe(172_800_000);
    expect(parseDuration("10min")).toBe(600_000);
    expect(parseDuration("1.5s")).toBe(1500);
    expect(parseDuration("30")).toBe(30_000);
    expect(parseDuration(30)).toBe(30_000);
    expect(parseDuration(" 1h 5m ")).toBe(3_900_000);
  });

  it("refuses anything else", () => {
    for (const bad of ["", "h", "1x", "1h30", "-5s", "1 hour", "abc", "1h-5m"]) expect(parseDuration(bad), bad).toBeUndefined();
    expect(parseDuration(Number.NaN)).toBeUndefined();
    expect(parseDuration(-1)).toBeUndefined();
  });
});

describe("formatDuration", () => {
  it("is short and stable", () => {
    expect(formatDuration(420)).toBe("420ms");
    expect(formatDuration(1234)).toBe("1.2s");
    expect(formatDuration(65_000)).toBe("1m05s");
    expect(formatDuration(3_720_000)).toBe("1h02m");
  });
});

describe("formatSetting", () => {
  it("gives a configured limit back in the unit it was likely written in", () => {
    expect(formatSetting(2_000)).toBe("2s");
    expect(formatSetting(600_000)).toBe("10m");
    expect(formatSetting(3_600_000)).toBe("1h");
    expect(formatSetting(5_400_000)).toBe("90m");
    expect(formatSetting(1_500)).toBe("1.5s");
  });
});
