/**
 * Names recorded in an image are the image author's text: a newline in a
 * backing file name would forge lines in `info`, an escape sequence would
 * drive the user's terminal. Everything vdisk prints for humans (info, map,
 * error lines) passes through escapeControl; JSON output through escapeJson.
 *
 * Escaped: C0 controls, DEL, C1 controls (U+0080–U+009F, some terminals act
 * on them), the Unicode line and paragraph separators and the bidirectional
 * overrides and isolates (they reorder what the reader sees). The escapes are
 * JavaScript's (`\n`, `\x1b`, `\u202e`); a backslash itself is left alone, as
 * Windows names are full of them.
 */
// eslint-disable-next-line no-control-regex
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

const SHORT: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

export function escapeControl(s: string): string {
  return s.replace(UNSAFE, (c) => {
    const short = SHORT[c];
    if (short) return short;
    const code = c.charCodeAt(0);
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
  });
}

/**
 * JSON text with the characters JSON.stringify leaves as they are (DEL, C1,
 * line/paragraph separators, bidi controls; U+0000–U+001F it escapes itself)
 * written as \uXXXX escapes too, as QEMU's JSON writer does for everything
 * outside printable ASCII: the text still parses to exactly the recorded
 * name, and shown on a terminal it cannot drive it. Outside string literals
 * JSON text holds none of these characters (its whitespace is C0, which is
 * left alone), so replacing them everywhere is safe.
 */
const JSON_UNSAFE = /[\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

export function escapeJson(json: string): string {
  return json.replace(JSON_UNSAFE, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}
