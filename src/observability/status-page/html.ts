/**
 * HTML built with a tagged template that escapes every interpolated value
 * unless it is already `Html` (made by this template). Nix logs, error text
 * and even host names are untrusted here, so escaping is the default and
 * markup the exception. Hand-written on purpose: five characters in one
 * function and a 20-line template tag are smaller and easier to audit than
 * a templating library and its dependencies.
 */

/** Markup that is already safe: only `html` and `joinHtml` make it. */
export class Html {
  constructor(readonly text: string) {}
  toString(): string {
    return this.text;
  }
}

const ESCAPES: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

/** Text as it may stand in an element's content or a quoted attribute value. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ESCAPES[c] as string);
}

type Value = Html | string | number | null | undefined | false | readonly Value[];

function piece(value: Value): string {
  if (value === null || value === undefined || value === false) return "";
  if (value instanceof Html) return value.text;
  if (Array.isArray(value)) return (value as readonly Value[]).map(piece).join("");
  return escapeHtml(String(value));
}

export function html(strings: TemplateStringsArray, ...values: Value[]): Html {
  let out = strings[0] as string;
  for (let i = 0; i < values.length; i++) out += piece(values[i] as Value) + (strings[i + 1] as string);
  return new Html(out);
}
